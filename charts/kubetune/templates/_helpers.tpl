{{/* Names, labels, images and the operator's RBAC rules. */}}

{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name, at most 63 characters (a DNS label, the longest name
a Service may have). fullnameOverride replaces it; otherwise it is the release
name, followed by the chart name unless the release name already contains it.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The full name with a suffix ("metrics", "view", ...), still at most 63
characters: the full name is shortened, never the suffix, so names stay
distinct. Call as (include "kubetune.suffixed" (list . "metrics")).
*/}}
{{- define "kubetune.suffixed" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $keep := sub 62 (len $suffix) | int -}}
{{- printf "%s-%s" (include "kubetune.fullname" $root | trunc $keep | trimSuffix "-") $suffix -}}
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the appVersion. */}}
{{- define "kubetune.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.ha" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/*
The operator's permissions inside every namespace it watches. Each rule is
backed by an API call the operator makes (tests/chart/test_rbac.py records
them against the API emulator and fails on any call not granted here, and on
any grant here that is not in its reviewed list).
*/}}
{{- define "kubetune.namespacedRules" -}}
# FineTuneJobs: watch them; remove the finalizer kubetune.io/finalizer older versions set;
# delete a finished job after its ttlSecondsAfterFinished.
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs"]
  verbs: ["list", "watch", "patch", "delete"]
# Write status: phase, conditions, restarts, and rank 0's checked progress
# reports. The operator is the only writer: trainer pods get no API permission.
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift).
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs/finalizers", "finetunesweeps/finalizers"]
  verbs: ["update"]
# FineTuneSweeps: watch them, Kopf's finalizer (patch), the study in status;
# each trial is a FineTuneJob the sweep creates and owns.
- apiGroups: ["kubetune.io"]
  resources: ["finetunesweeps"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunesweeps/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.io"]
  resources: ["finetunejobs"]
  verbs: ["create"]
# The gang: one Indexed Job per attempt; suspend/resume patches it; a failed
# attempt is deleted before the next. `get` adopts an existing Job after an
# operator restart instead of creating a second one.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Pod states explain failures (OOMKilled, image pulls, unschedulable).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Per job: the training config (read back for restarts) and the rendezvous
# Service; `get` adopts existing ones. The garbage collector deletes them
# through their owner references, so no `delete`.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "create"]
{{- if .Values.networkPolicy.enabled }}
# Per job: a NetworkPolicy letting only the job's own pods reach them
# (networkPolicy.enabled); `get` adopts an existing one.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
{{- end }}
# Kubernetes Events for every phase transition.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if include "kubetune.ha" . }}
{{- if eq .Values.watch.scope "namespaced" }}
# Kopf peering between the replicas (replicaCount > 1).
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end }}
{{- end -}}

{{/* Cluster-scoped: verify rank 0's report token (audience kubetune.io/report).
TokenReview says whose token it is (and the pod it is bound to); it reads no
object. Trainer pods themselves hold no API permission at all. */}}
{{- define "kubetune.tokenReviewRules" -}}
{{- if .Values.jobDefaults.statusReporter }}
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
{{- end }}
{{- end -}}

{{/* Cluster-scoped permissions, cluster-wide mode only. */}}
{{- define "kubetune.clusterRules" -}}
{{- include "kubetune.tokenReviewRules" . }}
# Kopf notices when the FineTuneJob CRD is installed, upgraded or removed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if include "kubetune.ha" . }}
# Kopf peering between the replicas (replicaCount > 1).
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["list", "watch", "patch"]
{{- end }}
{{- end -}}

{{/*
The report endpoint's TLS (values reportTLS): "true" when rank 0 reports over
HTTPS, the Secret the operator serves from, and the names its certificate
carries (the report Service's, short and qualified).
*/}}
{{- define "kubetune.reportTLS" -}}
{{- if and .Values.jobDefaults.statusReporter (not .Values.reportTLS.insecurePlainHTTP) -}}true{{- end -}}
{{- end -}}

{{- define "kubetune.reportTLSSecret" -}}
{{- if eq .Values.reportTLS.source "secret" -}}
{{- required "reportTLS.source is \"secret\" but reportTLS.secretName is empty: name your kubernetes.io/tls Secret (keys tls.crt, tls.key, ca.crt) in the release namespace" .Values.reportTLS.secretName -}}
{{- else if eq .Values.reportTLS.source "cert-manager" -}}
{{- include "kubetune.suffixed" (list . "report-cert") -}}
{{- else -}}
{{- include "kubetune.suffixed" (list . "report-tls") -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.reportDNSNames" -}}
{{- $svc := include "kubetune.suffixed" (list . "report") -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}
