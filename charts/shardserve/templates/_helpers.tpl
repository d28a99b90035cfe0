{{/* Names and labels shared by every template. */}}

{{- define "shardserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: <release>-shardserve, or the release name when it already says shardserve. */}}
{{- define "shardserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "shardserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shardserve.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shardserve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "shardserve.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: shardserve
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "shardserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shardserve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "shardserve.operatorImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "shardserve.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) }}
{{- end }}

{{/* The Lease the operator replicas compete for (one per release). */}}
{{- define "shardserve.leaseName" -}}
{{- include "shardserve.fullname" . }}
{{- end }}

{{/*
What the operator does in each namespace it watches; see operators/shardserve_operator
(kube.py, observe.py, apply.py) and kopf's own watches. Keep in step with
tests/cluster/test_rbac.py, which runs the operator and compares.
*/}}
{{- define "shardserve.namespacedRules" -}}
# kopf lists and watches ModelDeployments and keeps its progress in annotations
# (patch); the operator reads one before reconciling after a child changed (get).
- apiGroups: ["shardserve.dev"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Status is written with a merge patch on the status subresource.
- apiGroups: ["shardserve.dev"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion, which the API server
# allows only to those who may update the owner's finalizers.
- apiGroups: ["shardserve.dev"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# Children: watched by label, read, created and replaced (PUT with the
# resourceVersion read). The RayService and Service always exist while the
# ModelDeployment does (garbage collection removes them with it); only an
# Ingress is deleted, when spec.ingress is removed.
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "update"]
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
# The RayClusters KubeRay runs for each RayService: watched by label, read for
# live worker counts, and patched with the worker bounds (KubeRay does not
# pass new minReplicas/maxReplicas on to a running cluster). Never created.
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "list", "watch", "patch"]
# A pvc:// model's claim: read to report a missing or unshareable claim.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Condition transitions are reported as Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Namespaces that get the Ray NetworkPolicy: networkPolicy.namespaces, else the
watched namespaces. A NetworkPolicy covers only its own namespace, so when the
operator watches every namespace and none is listed, none is rendered (NOTES
says so) rather than one in a namespace that may hold no ModelDeployment.
*/}}
{{- define "shardserve.networkPolicyNamespaces" -}}
{{- $names := .Values.networkPolicy.namespaces | default .Values.watchNamespaces | default (list) }}
{{- toJson $names }}
{{- end }}

{{/* Ray pods of ModelDeployments (labels from the operator's naming.build_pod_labels). */}}
{{- define "shardserve.rayPodSelector" -}}
matchLabels:
  app.kubernetes.io/name: shardserve
matchExpressions:
  - key: shardserve.dev/model-deployment
    operator: Exists
{{- end }}
