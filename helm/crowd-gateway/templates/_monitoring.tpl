{{/*
A ServiceMonitor or PodMonitor; call with (dict "root" $ "kind" "ServiceMonitor" "component" "gateway" "job" "crowd-gateway").
The `job` label is fixed (not the Service name) because the alert rules in
deploy/prometheus/crowd-gateway-rules.yaml select on it; vLLM targets also get a `member` label.
*/}}
{{- define "crowd-gateway.monitor" -}}
{{- $root := .root }}
{{- $mon := $root.Values.monitoring }}
apiVersion: monitoring.coreos.com/v1
kind: {{ .kind }}
metadata:
  name: {{ include "crowd-gateway.fullname" $root }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "crowd-gateway.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- with $mon.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "crowd-gateway.selectorLabels" $root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
  {{ if eq .kind "ServiceMonitor" }}endpoints{{ else }}podMetricsEndpoints{{ end }}:
    - port: http
      path: /metrics
      interval: {{ $mon.interval }}
      scrapeTimeout: {{ $mon.scrapeTimeout }}
      relabelings:
        - targetLabel: job
          replacement: {{ .job }}
        {{- if eq .component "vllm" }}
        - sourceLabels: [__meta_kubernetes_pod_label_crowd_gateway_member]
          targetLabel: member
        {{- end }}
{{- end }}

{{/* Whether the cluster serves a prometheus-operator kind, e.g. (include "crowd-gateway.hasCRD" (list $ "PrometheusRule")). */}}
{{- define "crowd-gateway.hasCRD" -}}
{{- $root := index . 0 }}
{{- if $root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" (index . 1)) }}true{{ end }}
{{- end }}
