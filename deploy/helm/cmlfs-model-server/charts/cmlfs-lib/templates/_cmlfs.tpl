{{/*
cmlfs-lib: named templates that give any model-server pod an encrypted model at an
ordinary path. Every template takes one dict:

  (dict "cmlfs" .Values.cmlfs "root" $)

where .Values.cmlfs follows the `cmlfs:` block of cmlfs-model-server/values.yaml.

Sidecar mode (mounts propagate between containers):
  initContainers:
    {{- include "cmlfs-lib.sidecar" (dict "cmlfs" .Values.cmlfs "root" $) | nindent 8 }}
  server container volumeMounts:
    {{- include "cmlfs-lib.serverVolumeMount" (dict "cmlfs" .Values.cmlfs "root" $) | nindent 12 }}
  volumes:
    {{- include "cmlfs-lib.volumes" (dict "cmlfs" .Values.cmlfs "root" $) | nindent 8 }}

In-container mode (Confidential Containers: no propagation), the server image must
contain cmlfs (container/Dockerfile with BASE_IMAGE=<server image>) and its command
becomes:
  command: {{- include "cmlfs-lib.runCommand" (dict "cmlfs" .Values.cmlfs "root" $ "command" (concat .Values.command .Values.args)) | nindent 12 }}
  env: {{- include "cmlfs-lib.env" ... }}, volumeMounts: cmlfs-lib.credentialMounts and
  cmlfs-lib.serverVolumeMount, securityContext: cmlfs-lib.mountSecurityContext, resources:
  cmlfs-lib.attesterResources (dict "cmlfs" .Values.cmlfs "base" .Values.resources).
*/}}

{{/* The FUSE mountpoint: a subdirectory of the shared volume, never its root. */}}
{{- define "cmlfs-lib.modelPath" -}}
{{- $c := .cmlfs -}}
{{- printf "%s/%s" (trimSuffix "/" $c.mountPath) $c.modelDir -}}
{{- end -}}

{{- define "cmlfs-lib.statusPort" -}}
{{- .cmlfs.http.port | default 9100 -}}
{{- end -}}

{{/* One env entry from a literal value or a valueFrom source (Secret or ConfigMap key). */}}
{{- define "cmlfs-lib.envVar" -}}
- name: {{ .name }}
{{- if .from }}
  valueFrom:
    {{- toYaml .from | nindent 4 }}
{{- else }}
  value: {{ .value | quote }}
{{- end }}
{{- end -}}

{{- define "cmlfs-lib.env" -}}
{{- $c := .cmlfs -}}
{{- if not (or $c.store $c.storeFrom) }}
{{- fail "cmlfs.enabled needs cmlfs.store or cmlfs.storeFrom (where the encrypted model is)" }}
{{- end -}}
{{ include "cmlfs-lib.envVar" (dict "name" "CMLFS_STORE" "value" $c.store "from" $c.storeFrom) }}
{{- if or $c.keyUri $c.keyUriFrom }}
{{ include "cmlfs-lib.envVar" (dict "name" "CMLFS_KEY_URI" "value" $c.keyUri "from" $c.keyUriFrom) }}
{{- end }}
- name: CMLFS_MOUNT
  value: {{ include "cmlfs-lib.modelPath" . | quote }}
{{- if $c.http.enabled }}
- name: CMLFS_HTTP
  value: {{ printf "0.0.0.0:%v" (include "cmlfs-lib.statusPort" .) | quote }}
{{- end }}
{{- with $c.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The files set in values that an option names (CA bundles, the trusted publisher's
     public key), as a JSON list of {flag, configMapName, secretName, key}: each is a
     ConfigMap or Secret mounted at /etc/cmlfs/<flag> and named by --<flag>. */}}
{{- define "cmlfs-lib.fileOptions" -}}
{{- $c := .cmlfs -}}
{{- $files := list -}}
{{- $publisher := $c.trustedPublisher | default dict -}}
{{- if and $publisher.configMapName $publisher.secretName }}
{{- fail "cmlfs.trustedPublisher: set configMapName or secretName, not both" }}
{{- end -}}
{{- range $flag, $f := dict "kbs-ca" $c.kbsCA "store-ca" ($c.storeCA | default dict) "trust-publisher" $publisher -}}
{{- if or $f.configMapName $f.secretName -}}
{{- $key := $f.key | default (ternary "publisher.pub" "ca.crt" (eq $flag "trust-publisher")) -}}
{{- $files = append $files (dict "flag" $flag "configMapName" ($f.configMapName | default "") "secretName" ($f.secretName | default "") "key" $key) -}}
{{- end -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* cmlfs options shared by `cmlfs mount` (sidecar) and `cmlfs run` (in-container). */}}
{{- define "cmlfs-lib.args" -}}
{{- $c := .cmlfs -}}
- --allow-other
- --cache-size={{ $c.cacheSize }}
- --attester={{ $c.attester }}
{{- with ($c.vtpm | default dict) }}
{{- with .tcti }}
- --tpm-tcti={{ . }}
{{- end }}
{{- with .metadataUrl }}
- --metadata-url={{ . }}
{{- end }}
{{- end }}
{{- with $c.keyId }}
- --key-id={{ . }}
{{- end }}
{{- range (include "cmlfs-lib.fileOptions" . | fromJsonArray) }}
- --{{ .flag }}=/etc/cmlfs/{{ .flag }}/{{ .key }}
{{- end }}
{{- with $c.minModelVersion }}
- --min-model-version={{ . }}
{{- end }}
{{- with $c.storeCredentials.headerFileSecret.name }}
- --store-header-file=/etc/cmlfs/store-headers/{{ $c.storeCredentials.headerFileSecret.key }}
{{- end }}
{{- with $c.storeCredentials.registryAuthSecret.name }}
- --registry-auth-file=/etc/cmlfs/registry/{{ $c.storeCredentials.registryAuthSecret.key }}
{{- end }}
{{- range $c.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "cmlfs-lib.credentialMounts" -}}
{{- $c := .cmlfs -}}
- name: cmlfs-run
  mountPath: /run/cmlfs
{{- range (include "cmlfs-lib.fileOptions" . | fromJsonArray) }}
- name: cmlfs-{{ .flag }}
  mountPath: /etc/cmlfs/{{ .flag }}
  readOnly: true
{{- end }}
{{- if $c.storeCredentials.headerFileSecret.name }}
- name: cmlfs-store-headers
  mountPath: /etc/cmlfs/store-headers
  readOnly: true
{{- end }}
{{- if $c.storeCredentials.registryAuthSecret.name }}
- name: cmlfs-registry-auth
  mountPath: /etc/cmlfs/registry
  readOnly: true
{{- end }}
{{- end -}}

{{/* The shared model volume (an emptyDir: plaintext never lands on it) and credentials. */}}
{{- define "cmlfs-lib.volumes" -}}
{{- $c := .cmlfs -}}
- name: {{ $c.volumeName }}
  emptyDir: {}
- name: cmlfs-run
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- range (include "cmlfs-lib.fileOptions" . | fromJsonArray) }}
- name: cmlfs-{{ .flag }}
  {{- if .secretName }}
  secret:
    secretName: {{ .secretName }}
  {{- else }}
  configMap:
    name: {{ .configMapName }}
  {{- end }}
{{- end }}
{{- with $c.storeCredentials.headerFileSecret.name }}
- name: cmlfs-store-headers
  secret:
    secretName: {{ . }}
    defaultMode: 0400
{{- end }}
{{- with $c.storeCredentials.registryAuthSecret.name }}
- name: cmlfs-registry-auth
  secret:
    secretName: {{ . }}
    defaultMode: 0400
{{- end }}
{{- end -}}

{{- define "cmlfs-lib.image" -}}
{{- $c := .cmlfs -}}
{{- $tag := $c.image.tag | default .root.Chart.AppVersion -}}
{{- if not $tag }}
{{- fail "set cmlfs.image.tag (this chart has no appVersion to default to)" }}
{{- end -}}
{{- printf "%s:%s" $c.image.repository $tag -}}
{{- end -}}

{{/* A FUSE mount needs /dev/fuse and CAP_SYS_ADMIN; Bidirectional propagation needs privileged. */}}
{{- define "cmlfs-lib.mountSecurityContext" -}}
{{- toYaml .cmlfs.securityContext -}}
{{- end -}}

{{/* Sidecar probe: the mount table, read without touching the mount (stat could hang). */}}
{{- define "cmlfs-lib.mountProbe" -}}
{{- $c := .cmlfs -}}
{{- if eq $c.probe "http" -}}
httpGet:
  path: /readyz
  port: cmlfs-status
{{- else -}}
exec:
  command:
    - grep
    - -q
    - {{ printf " %s .* - fuse.cmlfs " (include "cmlfs-lib.modelPath" .) | quote }}
    - /proc/self/mountinfo
{{- end }}
{{- end -}}

{{/* The sidecar container: a list item for initContainers (native sidecar, K8s >= 1.29)
     or, with nativeSidecar: false, for the front of containers. */}}
{{- define "cmlfs-lib.sidecar" -}}
{{- $c := .cmlfs -}}
{{- if and (eq $c.probe "http") (not $c.http.enabled) }}
{{- fail "cmlfs.probe: http needs cmlfs.http.enabled" }}
{{- end -}}
- name: cmlfs
  image: {{ include "cmlfs-lib.image" . | quote }}
  imagePullPolicy: {{ $c.image.pullPolicy }}
  {{- if $c.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    {{- include "cmlfs-lib.args" . | nindent 4 }}
  env:
    {{- include "cmlfs-lib.env" . | nindent 4 }}
  {{- with $c.storeCredentials.envSecretName }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  {{- if $c.http.enabled }}
  ports:
    - name: cmlfs-status
      containerPort: {{ include "cmlfs-lib.statusPort" . }}
      protocol: TCP
  {{- end }}
  {{- if $c.nativeSidecar }}
  startupProbe:
    {{- include "cmlfs-lib.mountProbe" . | nindent 4 }}
    periodSeconds: 2
    timeoutSeconds: 2
    failureThreshold: {{ $c.startupFailureThreshold }}
  {{- else }}
  lifecycle:
    postStart:
      exec:
        command:
          - sh
          - -c
          - {{ printf "for i in $(seq %v); do grep -q ' %s .* - fuse.cmlfs ' /proc/self/mountinfo && exit 0; sleep 2; done; exit 1" $c.startupFailureThreshold (include "cmlfs-lib.modelPath" .) | quote }}
  {{- end }}
  {{- if $c.http.enabled }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: cmlfs-status
    periodSeconds: 10
    timeoutSeconds: 5
  {{- end }}
  securityContext:
    {{- include "cmlfs-lib.mountSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: {{ $c.volumeName }}
      mountPath: {{ $c.mountPath }}
      mountPropagation: Bidirectional
    {{- include "cmlfs-lib.credentialMounts" . | nindent 4 }}
  {{- with include "cmlfs-lib.attesterResources" (dict "cmlfs" $c "base" $c.resources) | fromYaml }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* Resources (YAML) of the container that attests: "base", plus one of the device plugin
     resource cmlfs.vtpm.deviceResource names (the node's /dev/tpmrm0) when it is set. */}}
{{- define "cmlfs-lib.attesterResources" -}}
{{- $resources := deepCopy (.base | default dict) -}}
{{- with (.cmlfs.vtpm | default dict).deviceResource }}
{{- $limits := deepCopy ($resources.limits | default dict) -}}
{{- $_ := set $limits . 1 -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* The model server's view of the shared volume: it sees the sidecar's mount, and a new
     one after a sidecar restart (HostToContainer). */}}
{{- define "cmlfs-lib.serverVolumeMount" -}}
{{- $c := .cmlfs -}}
- name: {{ $c.volumeName }}
  mountPath: {{ $c.mountPath }}
  {{- if eq $c.mode "sidecar" }}
  mountPropagation: HostToContainer
  readOnly: true
  {{- end }}
{{- end -}}

{{/* In-container mode: the server's command wrapped by `cmlfs run`. Needs "command". The
     server container mounts FUSE itself, so it runs privileged: refused unless the pod runs
     in a confidential VM (tdxEnabled or runtimeClassName, OPEA style, where privileged is
     scoped to the VM) or cmlfs.acceptPrivilegedServer says the operator accepts it. */}}
{{- define "cmlfs-lib.runCommand" -}}
{{- if not .command }}
{{- fail "cmlfs.mode: in-container needs the server's full command (command and args) in values" }}
{{- end -}}
{{- $v := .root.Values -}}
{{- if not (or $v.tdxEnabled $v.runtimeClassName .cmlfs.acceptPrivilegedServer) }}
{{- fail "cmlfs.mode: in-container runs the model server container privileged (it mounts FUSE); on a normal node that is a privileged model server. Select a confidential runtime (tdxEnabled=true or runtimeClassName) or set cmlfs.acceptPrivilegedServer=true" }}
{{- end -}}
- cmlfs
- run
- --store=$(CMLFS_STORE)
- --mount=$(CMLFS_MOUNT)
{{- if or .cmlfs.keyUri .cmlfs.keyUriFrom }}
- --key-uri=$(CMLFS_KEY_URI)
{{- end }}
{{- if .cmlfs.http.enabled }}
- --http=$(CMLFS_HTTP)
{{- end }}
{{ include "cmlfs-lib.args" . }}
- --
{{- range .command }}
- {{ . | quote }}
{{- end }}
{{- end -}}
