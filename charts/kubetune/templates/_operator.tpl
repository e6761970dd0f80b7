{{/*
Environment of the operator container. Numbers go through int64 before quote:
Helm reads numbers in values files as floats, and quote would print
1000680000 as "1.00068e+09". The names are the operator's settings
(operator/kubetune_operator/settings.py); tests/chart checks that every name
set here is one the operator reads.
*/}}
{{- define "kubetune.operatorEnv" -}}
{{- $d := .Values.jobDefaults -}}
# Kopf's identity of this replica among its peers.
- name: POD_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if eq .Values.watch.scope "namespaced" }}
- name: KUBETUNE_WATCH_NAMESPACES
  value: {{ join "," .Values.watch.namespaces | quote }}
{{- end }}
{{- if include "kubetune.ha" . }}
- name: KUBETUNE_STANDALONE
  value: "false"
- name: KUBETUNE_PEERING_NAME
  value: {{ .Values.peering.name | quote }}
{{- else }}
- name: KUBETUNE_STANDALONE
  value: "true"
{{- end }}
- name: KUBETUNE_HEALTH_PORT
  value: {{ int64 .Values.operator.healthPort | quote }}
- name: KUBETUNE_METRICS_PORT
  value: {{ int64 .Values.operator.metricsPort | quote }}
- name: KUBETUNE_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
- name: KUBETUNE_RESYNC_SECONDS
  value: {{ int64 .Values.operator.resyncSeconds | quote }}
- name: KUBETUNE_MAX_BACKOFF_SECONDS
  value: {{ int64 .Values.operator.maxBackoffSeconds | quote }}
- name: KUBETUNE_TRAINER_IMAGE
  value: {{ include "kubetune.image" (list $d.image .) | quote }}
- name: KUBETUNE_IMAGE_PULL_POLICY
  value: {{ $d.imagePullPolicy | quote }}
{{- with $d.imagePullSecrets }}
- name: KUBETUNE_IMAGE_PULL_SECRETS
  value: {{ include "kubetune.secretNames" . | quote }}
{{- end }}
- name: KUBETUNE_RUN_AS_USER
  value: {{ int64 $d.podSecurityContext.runAsUser | quote }}
- name: KUBETUNE_RUN_AS_GROUP
  value: {{ int64 $d.podSecurityContext.runAsGroup | quote }}
- name: KUBETUNE_FS_GROUP
  value: {{ int64 $d.podSecurityContext.fsGroup | quote }}
- name: KUBETUNE_RENDEZVOUS_PORT
  value: {{ int64 $d.rendezvousPort | quote }}
- name: KUBETUNE_STATUS_REPORTER
  value: {{ $d.statusReporter | quote }}
- name: KUBETUNE_NETWORK_POLICY
  value: {{ .Values.networkPolicy.enabled | quote }}
{{- if $d.statusReporter }}
- name: KUBETUNE_REPORT_PORT
  value: {{ int64 .Values.operator.reportPort | quote }}
{{- if include "kubetune.reportTLS" . }}
- name: KUBETUNE_REPORT_URL
  value: {{ printf "https://%s.%s.svc:%d" (include "kubetune.suffixed" (list . "report")) .Release.Namespace (int64 .Values.operator.reportPort) | quote }}
- name: KUBETUNE_REPORT_TLS_CERT
  value: /etc/kubetune/report-tls/tls.crt
- name: KUBETUNE_REPORT_TLS_KEY
  value: /etc/kubetune/report-tls/tls.key
- name: KUBETUNE_REPORT_CA
  value: /etc/kubetune/report-tls/ca.crt
{{- else }}
- name: KUBETUNE_REPORT_URL
  value: {{ printf "http://%s.%s.svc:%d" (include "kubetune.suffixed" (list . "report")) .Release.Namespace (int64 .Values.operator.reportPort) | quote }}
# reportTLS.insecurePlainHTTP: report tokens travel unencrypted (the operator logs a warning).
- name: KUBETUNE_REPORT_INSECURE_HTTP
  value: "true"
{{- end }}
{{- end }}
{{- with $d.storage.endpoint }}
- name: KUBETUNE_DEFAULT_STORAGE_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with $d.storage.region }}
- name: KUBETUNE_DEFAULT_STORAGE_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $d.storage.secretName }}
- name: KUBETUNE_DEFAULT_STORAGE_SECRET
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "kubetune.secretNames" -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names .name }}{{ end -}}
{{- join "," $names -}}
{{- end -}}

{{/*
Checks across values that JSON Schema cannot phrase well; each message says
what to change.
*/}}
{{- define "kubetune.validate" -}}
{{- if and (eq .Values.watch.scope "namespaced") (not .Values.watch.namespaces) -}}
{{- fail "watch.scope is \"namespaced\" but watch.namespaces is empty: list the namespaces whose FineTuneJobs the operator should handle, e.g. --set 'watch.namespaces={ml-team-a,ml-team-b}', or use watch.scope=cluster" -}}
{{- end -}}
{{- if and (eq .Values.watch.scope "cluster") .Values.watch.namespaces -}}
{{- fail (printf "watch.namespaces (%s) is only used with watch.scope=namespaced; set watch.scope=namespaced or remove watch.namespaces" (join "," .Values.watch.namespaces)) -}}
{{- end -}}
{{- if eq (int64 .Values.operator.healthPort) (int64 .Values.operator.metricsPort) -}}
{{- fail (printf "operator.healthPort and operator.metricsPort are both %d: the operator serves /healthz and /metrics on separate ports; give them different values" (int64 .Values.operator.healthPort)) -}}
{{- end -}}
{{- if and (ne .Values.metrics.service.type "ClusterIP") (not .Values.metrics.service.exposeOutsideCluster) -}}
{{- fail (printf "metrics.service.type=%s publishes the operator's metrics outside the cluster (job names, namespaces, failure reasons): keep ClusterIP and scrape from inside, or set metrics.service.exposeOutsideCluster=true to accept that" .Values.metrics.service.type) -}}
{{- end -}}
{{- range $key, $_ := .Values.commonLabels -}}
{{- if or (hasPrefix "app.kubernetes.io/" $key) (eq $key "helm.sh/chart") -}}
{{- fail (printf "commonLabels.%s: the chart sets app.kubernetes.io/* and helm.sh/chart labels itself (selectors depend on them); use another key, e.g. team or cost-center" $key) -}}
{{- end -}}
{{- end -}}
{{- $issuer := .Values.reportTLS.certManager.issuerRef -}}
{{- if and (or $issuer.kind $issuer.group) (not $issuer.name) -}}
{{- fail "reportTLS.certManager.issuerRef has a kind or group but no name: name the Issuer or ClusterIssuer, or leave issuerRef empty ({}) for the chart's own self-signed CA" -}}
{{- end -}}
{{- if and .Values.reportTLS.secretName (ne .Values.reportTLS.source "secret") -}}
{{- fail (printf "reportTLS.secretName (%s) is only used with reportTLS.source=secret; set reportTLS.source=secret or remove reportTLS.secretName" .Values.reportTLS.secretName) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled=true: the ServiceMonitor scrapes that Service" -}}
{{- end -}}
{{- end -}}
