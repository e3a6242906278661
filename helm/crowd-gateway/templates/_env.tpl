{{/* Environment of the gateway container: secrets arrive here, the config file only names them. */}}
{{- define "crowd-gateway.gatewayEnv" -}}
{{- $g := .Values.gateway }}
{{- if include "crowd-gateway.hasApiKeys" . }}
- name: CROWD_GATEWAY_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "crowd-gateway.apiKeysSecretName" . }}
      key: {{ $g.apiKeys.existingSecretKey }}
{{- end }}
{{- include "crowd-gateway.redisEnv" . }}
{{- range $m := .Values.members }}
{{- if $m.apiKey }}
- name: {{ include "crowd-gateway.memberKeyEnv" $m }}
  valueFrom:
    secretKeyRef:
      name: {{ $m.apiKey.secretName }}
      key: {{ $m.apiKey.secretKey }}
{{- end }}
{{- end }}
{{- with $g.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* CROWD_GATEWAY_REDIS_URL for the internal StatefulSet or an external Redis; nothing for mode none. */}}
{{- define "crowd-gateway.redisEnv" -}}
{{- $r := .Values.redis }}
{{- if eq $r.mode "internal" }}
{{- if $r.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "crowd-gateway.redisSecretName" . }}
      key: {{ $r.auth.existingSecretKey }}
- name: CROWD_GATEWAY_REDIS_URL
  value: "redis://:$(REDIS_PASSWORD)@{{ include "crowd-gateway.redisName" . }}:6379/0"
{{- else }}
- name: CROWD_GATEWAY_REDIS_URL
  value: "redis://{{ include "crowd-gateway.redisName" . }}:6379/0"
{{- end }}
{{- else if eq $r.mode "external" }}
{{- if $r.external.existingSecret }}
- name: CROWD_GATEWAY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $r.external.existingSecret }}
      key: {{ $r.external.existingSecretKey }}
{{- else }}
- name: CROWD_GATEWAY_REDIS_URL
  value: {{ required "redis.mode external needs redis.external.url or redis.external.existingSecret" $r.external.url | quote }}
{{- end }}
{{- end }}
{{- end }}
