{{- define "nte.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nte.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels: minimal and immutable (a DaemonSet's selector cannot change). */}}
{{- define "nte.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nte.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nte.labels" -}}
{{ include "nte.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "nte.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nte.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "nte.image" -}}
{{- $registry := .Values.global.imageRegistry | default .Values.image.registry -}}
{{- $repository := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end -}}
{{- end }}

{{/* The namespace of every namespaced object: namespaceOverride, else the release's. */}}
{{- define "nte.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end -}}

{{/*
The kubelet's configuration on the host, as "file|dropinDir" (either may be empty), from
exporter.kubeletConfig: the distribution's paths (exporter/sources/kubelet_config.py DISTRIBUTIONS, cited in
docs/product.md), or file and dropinDir for custom.
*/}}
{{- define "nte.kubeletConfig" -}}
{{- $c := .Values.exporter.kubeletConfig -}}
{{- $paths := dict
  "kubeadm" (list (printf "%s/config.yaml" (.Values.exporter.hostPaths.kubeletDir | trimSuffix "/")) "")
  "eks-al2" (list "/etc/kubernetes/kubelet/kubelet-config.json" "")
  "eks-al2023" (list "/etc/kubernetes/kubelet/config.json" "/etc/kubernetes/kubelet/config.json.d")
  "gke" (list "/home/kubernetes/kubelet-config.yaml" "")
  "aks" (list "/etc/default/kubeletconfig.json" "")
  "k3s" (list "" "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d")
  "rke2" (list "" "/var/lib/rancher/rke2/agent/etc/kubelet.conf.d")
  "custom" (list $c.file $c.dropinDir) -}}
{{- $chosen := get $paths $c.distribution -}}
{{- printf "%s|%s" (index $chosen 0) (index $chosen 1) -}}
{{- end -}}
