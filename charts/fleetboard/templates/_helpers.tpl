{{/* Labels every object of the release carries. */}}
{{- define "fleetboard.labels" -}}
app.kubernetes.io/name: fleetboard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Labels that select the hub pods. */}}
{{- define "fleetboard.selectorLabels" -}}
app.kubernetes.io/name: fleetboard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: hub
{{- end }}

{{/* The container image. */}}
{{- define "fleetboard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The public tunnel endpoint, required. */}}
{{- define "fleetboard.endpoint" -}}
{{ required "tunnel.endpoint is required: the public host name or IP address members reach the hub's UDP port at (--set tunnel.endpoint=...)" .Values.tunnel.endpoint }}
{{- end }}

{{/* The WireGuard node port (QUIC's is the next one): required with a NodePort Service, where
members dial the node port, so the hub must advertise it; optional with a LoadBalancer. */}}
{{- define "fleetboard.nodePort" -}}
{{- if eq .Values.service.type "NodePort" -}}
{{ required "service.nodePort is required with service.type=NodePort: members dial the node port, so the hub advertises it (QUIC uses service.nodePort + 1)" .Values.service.nodePort }}
{{- else -}}
{{ .Values.service.nodePort | default "" }}
{{- end -}}
{{- end }}

{{/* The port the hub publishes in its Peer: the node port behind a NodePort Service, else
the Service (= container) port. */}}
{{- define "fleetboard.advertisePort" -}}
{{- if eq .Values.service.type "NodePort" -}}
{{ include "fleetboard.nodePort" . }}
{{- else -}}
{{ .Values.tunnel.port }}
{{- end -}}
{{- end }}
