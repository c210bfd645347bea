{{- define "cmlfs-model-server.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cmlfs-model-server.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cmlfs-model-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cmlfs-model-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cmlfs-model-server.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "cmlfs-model-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* model-volume when cmlfs is off: host path, PVC or emptyDir (OPEA globals). */}}
{{- define "cmlfs-model-server.plainModelVolume" -}}
- name: model-volume
{{- if .Values.global.modelUseHostPath }}
  hostPath:
    path: {{ .Values.global.modelUseHostPath }}
    type: Directory
{{- else if .Values.global.modelUsePVC }}
  persistentVolumeClaim:
    claimName: {{ .Values.global.modelUsePVC }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}
