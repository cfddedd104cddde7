{{/*
Names. The pool is named after the release (as in the upstream inferencepool chart); the EPP and everything
that belongs to it are "<release>-epp".
*/}}
{{- define "picker.poolName" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "picker.name" -}}
{{- printf "%s-epp" (.Release.Name | trunc 59 | trimSuffix "-") -}}
{{- end -}}

{{- define "picker.selectorLabels" -}}
app.kubernetes.io/name: picker
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: endpoint-picker
{{- end -}}

{{- define "picker.labels" -}}
{{ include "picker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{- end -}}

{{/* The EPP image: registry/repository:tag, the tag defaulting to the chart's appVersion, or a digest. */}}
{{- define "picker.image" -}}
{{- $img := .Values.inferenceExtension.image -}}
{{- if $img.digest -}}
{{- printf "%s/%s@%s" $img.registry $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.registry $img.repository (default .Chart.AppVersion $img.tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
The pools this release's EPP serves, as a YAML list: the release's own pool first, then extraPools (ours),
each with its ext_proc port (the one its endpointPickerRef names), the name of that port in the Pod and the
Service, its scoring document, model-server labels and target ports.
*/}}
{{- define "picker.pools" -}}
{{- $ie := .Values.inferenceExtension -}}
- name: {{ include "picker.poolName" . }}
  port: {{ int $ie.extProcPort }}
  portName: grpc-ext-proc
  configFile: {{ $ie.pluginsConfigFile | quote }}
  matchLabels: {{ toJson .Values.inferencePool.modelServers.matchLabels }}
  targetPorts: {{ toJson .Values.inferencePool.targetPorts }}
  headerMatches: {{ toJson (.Values.experimentalHttpRoute.headerMatches | default dict) }}
{{- range $i, $p := .Values.extraPools }}
- name: {{ $p.name | quote }}
  port: {{ int $p.extProcPort }}
  portName: {{ printf "ext-proc-%d" (add1 $i) }}
  configFile: {{ default $ie.pluginsConfigFile $p.pluginsConfigFile | quote }}
  matchLabels: {{ toJson (($p.modelServers | default dict).matchLabels | default dict) }}
  targetPorts: {{ toJson (default $.Values.inferencePool.targetPorts $p.targetPorts) }}
  headerMatches: {{ toJson ($p.headerMatches | default dict) }}
{{- end }}
{{- end -}}

{{/* The InferencePool API group from inferencePool.apiVersion ("group/version"). */}}
{{- define "picker.poolGroup" -}}
{{- (split "/" .Values.inferencePool.apiVersion)._0 -}}
{{- end -}}

{{/* A scrape configured by the chart needs the reader ServiceAccount's token: the ServiceMonitor's, or GKE
managed Prometheus' PodMonitoring (provider gke), while --metrics-endpoint-auth is on. */}}
{{- define "picker.scrapeWithToken" -}}
{{- $mon := .Values.inferenceExtension.monitoring -}}
{{- $gke := and (eq (.Values.provider.name | lower) "gke") $mon.gke.enabled -}}
{{- if and $mon.prometheus.auth.enabled (or $mon.prometheus.enabled $gke) -}}true{{- end -}}
{{- end -}}

{{/* Leader election: on for more than one replica, as in the upstream chart. */}}
{{- define "picker.leaderElection" -}}
{{- if gt (int .Values.inferenceExtension.replicas) 1 -}}true{{- end -}}
{{- end -}}

{{/* Fail early on values that would deploy something broken. */}}
{{- define "picker.validate" -}}
{{- $provider := .Values.provider.name | toString | lower -}}
{{- if not (has $provider (list "none" "istio" "gke")) -}}
{{- fail (printf "provider.name must be one of none, istio, gke (got %q)" .Values.provider.name) -}}
{{- end -}}
{{- if not (has .Values.inferencePool.apiVersion (list "inference.networking.k8s.io/v1" "inference.networking.x-k8s.io/v1alpha2")) -}}
{{- fail (printf "inferencePool.apiVersion must be inference.networking.k8s.io/v1 or inference.networking.x-k8s.io/v1alpha2 (got %q)" .Values.inferencePool.apiVersion) -}}
{{- end -}}
{{- if not (and .Values.inferencePool.modelServers .Values.inferencePool.modelServers.matchLabels) -}}
{{- fail "inferencePool.modelServers.matchLabels is required: the labels of the model-server Pods of the pool" -}}
{{- end -}}
{{- if not .Values.inferencePool.targetPorts -}}
{{- fail "inferencePool.targetPorts needs at least one port" -}}
{{- end -}}
{{- if gt (len .Values.inferencePool.targetPorts) 8 -}}
{{- fail "inferencePool.targetPorts takes at most 8 ports" -}}
{{- end -}}
{{- if not (has .Values.inferenceExtension.failureMode (list "FailOpen" "FailClose")) -}}
{{- fail (printf "inferenceExtension.failureMode must be FailOpen or FailClose (got %q)" .Values.inferenceExtension.failureMode) -}}
{{- end -}}
{{- $config := .Values.inferenceExtension.pluginsConfigFile -}}
{{- if and (ne $config "config.yaml") (not (hasKey (.Values.inferenceExtension.pluginsCustomConfig | default dict) $config)) -}}
{{- fail (printf "inferenceExtension.pluginsConfigFile %q is neither config.yaml nor a key of inferenceExtension.pluginsCustomConfig" $config) -}}
{{- end -}}
{{- include "picker.validatePools" . -}}
{{- range $flag, $_ := .Values.inferenceExtension.flags -}}
{{- if has $flag (list "pool" "pool-name" "pool-namespace" "pool-group" "config-file" "grpc-port" "grpc-health-port" "metrics-port" "metrics-endpoint-auth" "ha-enable-leader-election" "tracing" "model-header") -}}
{{- fail (printf "inferenceExtension.flags.%s is set by the chart from other values; set those instead" $flag) -}}
{{- end -}}
{{- end -}}
{{- end -}}


{{/* extraPools: every pool named once, on a port of its own, with its model-server labels and document. */}}
{{- define "picker.validatePools" -}}
{{- $ie := .Values.inferenceExtension -}}
{{- $names := list (include "picker.poolName" .) -}}
{{- $ports := list (int $ie.extProcPort) 9003 9090 9091 -}}
{{- $matches := list (toJson (.Values.experimentalHttpRoute.headerMatches | default dict)) -}}
{{- if gt (len (.Values.extraPools | default list)) 63 -}}
{{- fail "extraPools: at most 63 (64 pools per EPP); split them over several releases" -}}
{{- end -}}
{{- range $i, $p := .Values.extraPools | default list -}}
{{- if not (and $p.name (regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" (toString $p.name))) -}}
{{- fail (printf "extraPools[%d].name must be a Kubernetes object name (got %q)" $i (toString $p.name)) -}}
{{- end -}}
{{- if has $p.name $names -}}
{{- fail (printf "extraPools[%d].name %q is the release's pool or another extra pool" $i $p.name) -}}
{{- end -}}
{{- $names = append $names $p.name -}}
{{- if not $p.extProcPort -}}
{{- fail (printf "extraPools[%d].extProcPort is required: the EPP tells pools apart by the port their endpointPickerRef names" $i) -}}
{{- end -}}
{{- if has (int $p.extProcPort) $ports -}}
{{- fail (printf "extraPools[%d].extProcPort %d is already taken (another pool's, or the health/metrics/admin port)" $i (int $p.extProcPort)) -}}
{{- end -}}
{{- $ports = append $ports (int $p.extProcPort) -}}
{{- if not (and $p.modelServers $p.modelServers.matchLabels) -}}
{{- fail (printf "extraPools[%d].modelServers.matchLabels is required: the labels of that pool's model-server Pods" $i) -}}
{{- end -}}
{{- $config := default $ie.pluginsConfigFile $p.pluginsConfigFile -}}
{{- if and (ne $config "config.yaml") (not (hasKey ($ie.pluginsCustomConfig | default dict) $config)) -}}
{{- fail (printf "extraPools[%d].pluginsConfigFile %q is neither config.yaml nor a key of inferenceExtension.pluginsCustomConfig" $i $config) -}}
{{- end -}}
{{- if $.Values.experimentalHttpRoute.enabled -}}
{{- if not $p.headerMatches -}}
{{- fail (printf "extraPools[%d].headerMatches is required with experimentalHttpRoute.enabled: each pool's HTTPRoute needs matches of its own (for example x-gateway-model-name: <model>), or one route shadows the other" $i) -}}
{{- end -}}
{{- if has (toJson $p.headerMatches) $matches -}}
{{- fail (printf "extraPools[%d].headerMatches are those of another pool's HTTPRoute: the Gateway would send that traffic to one of them only" $i) -}}
{{- end -}}
{{- $matches = append $matches (toJson $p.headerMatches) -}}
{{- end -}}
{{- end -}}
{{- end -}}
