{{/* Labels every object of the release carries. */}}
{{- define "fleetboard-agent.labels" -}}
app.kubernetes.io/name: fleetboard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Labels that select the agent pods. */}}
{{- define "fleetboard-agent.selectorLabels" -}}
app.kubernetes.io/name: fleetboard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/* The container image. */}}
{{- define "fleetboard-agent.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels that select the fleetboard-dns pods. */}}
{{- define "fleetboard-agent.dnsSelectorLabels" -}}
app.kubernetes.io/name: fleetboard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dns
{{- end }}
