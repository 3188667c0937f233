{{/* Names and labels. */}}
{{- define "hone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "hone.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "hone.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hone.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name the existing ServiceAccount to use when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hone.labels" -}}
app.kubernetes.io/name: {{ include "hone.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hone
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The `annotations:` of an object's metadata (indented for it, on a line of its own): commonAnnotations
and any given as .extra; nothing at all when there are none. */}}
{{- define "hone.annotations" -}}
{{- $all := merge (deepCopy (default (dict) .extra)) (deepCopy (default (dict) .root.Values.commonAnnotations)) -}}
{{- with $all }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{- define "hone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hone.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator pod's security contexts: Pod Security "restricted", with the values merged over them. */}}
{{- define "hone.podSecurityContext" -}}
{{- $restricted := dict "runAsNonRoot" true "runAsUser" .Values.runAsUser "runAsGroup" .Values.runAsUser "fsGroup" .Values.runAsUser "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (merge (deepCopy .Values.operator.podSecurityContext) $restricted) -}}
{{- end -}}

{{- define "hone.containerSecurityContext" -}}
{{- $restricted := dict "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true "runAsNonRoot" true "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- toYaml (merge (deepCopy .Values.operator.containerSecurityContext) $restricted) -}}
{{- end -}}

{{- define "hone.image" -}}
{{- $img := index .root.Values.images .name -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks values.schema.json cannot express; each failure names the key and what to do.
*/}}
{{- define "hone.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled=true: without it every replica would reconcile the same objects" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.healthPort)) -}}
{{- fail (printf "metrics.port and healthPort are both %v: give them different ports" .Values.metrics.port) -}}
{{- end -}}
{{- range .Values.watchNamespaces -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) -}}
{{- fail (printf "watchNamespaces: %q is not a valid namespace name" .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.api.enabled (not .Values.api.store) -}}
{{- fail "api.enabled needs api.store: the s3://bucket/prefix where hone api keeps uploaded files and its jobs' models" -}}
{{- end -}}
{{- range $ns, $_ := .Values.budgets -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $ns) -}}
{{- fail (printf "budgets: %q is not a valid namespace name (the keys of budgets are namespaces)" $ns) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules: exactly the API calls it makes (tests/test_rbac.py checks them against its audit log). */}}
{{- define "hone.rules" -}}
- apiGroups: ["hone.dev"]
  resources: ["finetunejobs", "modelservings"]
  verbs: ["list", "watch"]
# get: a budget reservation whose job is gone from the cache is checked against the API server.
- apiGroups: ["hone.dev"]
  resources: ["finetunejobs"]
  verbs: ["get"]
# create: the default TokenBudget of a namespace that has none (defaultBudget).
- apiGroups: ["hone.dev"]
  resources: ["tokenbudgets"]
  verbs: ["list", "watch", "create"]
- apiGroups: ["hone.dev"]
  resources: ["tokenbudgets/status"]
  verbs: ["patch"]
# get on finetunejobs/status is never called by the operator, but the trainer's Role grants
# it, and Kubernetes lets a Role be created only by someone who holds what it grants.
- apiGroups: ["hone.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["hone.dev"]
  resources: ["modelservings/status"]
  verbs: ["patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create"]
# delete: a ModelServing stops serving a FineTuneJob whose safety check failed once its override is taken back.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# The NetworkPolicy of each FineTuneJob's and ModelServing's pods (networkPolicy.workloads).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* Whether to render Prometheus Operator objects: "auto" follows the cluster's APIs. */}}
{{- define "hone.want" -}}
{{- $v := .value -}}
{{- if eq (toString $v) "auto" -}}
{{- if .root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- else if $v -}}true{{- end -}}
{{- end -}}
