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

{{/* A warning when the mount is not pinned to the owner's model by cmlfs.keyId; shown in
     NOTES and, since `helm template` prints no NOTES, as a comment atop the Deployment. */}}
{{- define "cmlfs-model-server.pinWarning" -}}
{{- $c := .Values.cmlfs -}}
{{- if and $c.enabled (or $c.keyUri $c.keyUriFrom) (not $c.keyId) -}}
WARNING: cmlfs.keyUri is set but cmlfs.keyId is not. The store is not authenticated before
the key is known: without the pin the released key is used for whatever model the store
holds, and a key from a plain-HTTP broker is refused. Set cmlfs.keyId to the model's key id
(its owner publishes it; `cmlfs inspect STORE` shows it).
{{- else if and $c.enabled (not (or $c.keyUri $c.keyUriFrom $c.keyId)) -}}
WARNING: neither cmlfs.keyUri nor cmlfs.keyId is set: the key URI recorded in the store is
used only with a pinned key id, so the mount will be refused. Set cmlfs.keyId.
{{- end -}}
{{- end -}}
