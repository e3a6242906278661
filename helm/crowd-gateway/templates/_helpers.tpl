{{/* Names, labels and the derived values shared by the templates. */}}

{{- define "crowd-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped base name; kept short so "<fullname>-vllm-<member>" fits a DNS label. */}}
{{- define "crowd-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "crowd-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "crowd-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "crowd-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "crowd-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crowd-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of pod templates: the stable labels only. helm.sh/chart and app.kubernetes.io/version stay off
them, so bumping the chart alone never restarts pods (vLLM pods take minutes to load a model).
*/}}
{{- define "crowd-gateway.podLabels" -}}
{{ include "crowd-gateway.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crowd-gateway
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Init containers as YAML; one without a securityContext gets the pod's container securityContext, so
the pod still passes Pod Security "restricted". Call with (dict "containers" $list "securityContext" $sc).
*/}}
{{- define "crowd-gateway.initContainers" -}}
{{- $out := list }}
{{- range $c := .containers }}
{{- $c = deepCopy $c }}
{{- if not (hasKey $c "securityContext") }}
{{- $_ := set $c "securityContext" $.securityContext }}
{{- end }}
{{- $out = append $out $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{- define "crowd-gateway.gatewayName" -}}
{{- include "crowd-gateway.fullname" . }}
{{- end }}

{{- define "crowd-gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "crowd-gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.gateway.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "crowd-gateway.redisName" -}}
{{- printf "%s-redis" (include "crowd-gateway.fullname" .) }}
{{- end }}

{{/* The Secret holding the internal Redis' password: yours, or the one the chart generates. */}}
{{- define "crowd-gateway.redisSecretName" -}}
{{- default (printf "%s-redis-auth" (include "crowd-gateway.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "crowd-gateway.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "crowd-gateway.fullname" .)) .Values.gateway.apiKeys.existingSecret }}
{{- end }}

{{/* Whether the gateway gets an API-key Secret at all (an existing one, or one the chart creates). */}}
{{- define "crowd-gateway.hasApiKeys" -}}
{{- if or .Values.gateway.apiKeys.existingSecret .Values.gateway.apiKeys.keys }}true{{ end }}
{{- end }}

{{/* Name of a member's vLLM Deployment, Service and cache PVC. Call with (dict "root" $ "name" $m.name). */}}
{{- define "crowd-gateway.vllmName" -}}
{{- printf "%s-vllm-%s" (include "crowd-gateway.fullname" .root) .name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Environment variable that carries a member's upstream API key in the gateway pod. */}}
{{- define "crowd-gateway.memberKeyEnv" -}}
{{- printf "CROWD_MEMBER_%s_API_KEY" (.name | upper | replace "-" "_") }}
{{- end }}

{{/*
A member's settings with the `vllm` defaults filled in, as YAML (use with fromYaml).
Maps are merged one level deep and the member's keys win. `set` is used on purpose: sprig's
merge functions treat false and 0 as missing, so a member could not turn a default off.
*/}}
{{- define "crowd-gateway.member" -}}
{{- $defaults := .root.Values.vllm }}
{{- $out := dict }}
{{- range $key, $value := $defaults }}
{{- $_ := set $out $key (deepCopy $value) }}
{{- end }}
{{- range $key, $value := .member }}
{{- $base := get $out $key }}
{{- if and (kindIs "map" $value) (kindIs "map" $base) }}
{{- range $k, $v := $value }}
{{- $_ := set $base $k $v }}
{{- end }}
{{- else }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{- define "crowd-gateway.vllmSelectorLabels" -}}
{{ include "crowd-gateway.selectorLabels" .root }}
app.kubernetes.io/component: vllm
crowd-gateway/member: {{ .name }}
{{- end }}

{{/* The gateway's config file, rendered from values (validated again by gateway/config.py at start). */}}
{{- define "crowd-gateway.config" -}}
{{- $root := . }}
{{- $names := list }}
{{- $members := list }}
{{- range $m := .Values.members }}
{{- $names = append $names $m.name }}
{{- $entry := deepCopy ($m.gateway | default dict) }}
{{- $_ := set $entry "name" $m.name }}
{{- if $m.url }}
{{- $_ := set $entry "base_url" $m.url }}
{{- $_ := set $entry "model" $m.model }}
{{- else }}
{{- $_ := set $entry "base_url" (printf "http://%s:8000/v1" (include "crowd-gateway.vllmName" (dict "root" $root "name" $m.name))) }}
{{- $_ := set $entry "model" ($m.servedName | default $m.name) }}
{{- if not (hasKey $entry "dialect") }}
{{- $_ := set $entry "dialect" "vllm" }}
{{- end }}
{{- end }}
{{- if $m.apiKey }}
{{- $_ := set $entry "api_key_env" (include "crowd-gateway.memberKeyEnv" $m) }}
{{- end }}
{{- $members = append $members $entry }}
{{- end }}
{{- if ne (len $names) (len (uniq $names)) }}
{{- fail (printf "members: names must be unique, got %v" $names) }}
{{- end }}
{{- range $e := .Values.gateway.config.ensembles }}
{{- range $n := $e.members }}
{{- if not (has $n $names) }}
{{- fail (printf "gateway.config.ensembles: %q names member %q, which is not in members %v" $e.name $n $names) }}
{{- end }}
{{- end }}
{{- if and $e.escalation (not (has $e.escalation.to $names)) }}
{{- fail (printf "gateway.config.ensembles: %q escalates to %q, which is not in members %v" $e.name $e.escalation.to $names) }}
{{- end }}
{{- end }}
{{- $gateway := deepCopy (.Values.gateway.config.gateway | default dict) }}
{{- $_ := set $gateway "api_keys_env" "CROWD_GATEWAY_API_KEYS" }}
{{- $store := deepCopy (.Values.gateway.config.store | default dict) }}
{{- $_ := set $store "backend" (ternary "memory" "redis" (eq .Values.redis.mode "none")) }}
{{- $_ := set $store "redis_url_env" "CROWD_GATEWAY_REDIS_URL" }}
{{- $config := dict "gateway" $gateway "store" $store "members" $members }}
{{- $_ := set $config "ensembles" (.Values.gateway.config.ensembles | default list) }}
{{- $_ := set $config "tasks" (.Values.gateway.config.tasks | default list) }}
{{- with .Values.gateway.config.batches }}
{{- $_ := set $config "batches" . }}
{{- end }}
{{- toYaml $config }}
{{- end }}
