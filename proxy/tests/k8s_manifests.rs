//! conf/k8s/ is what an operator applies as it stands: every manifest must
//! decode into its Kubernetes type, the ClusterRole must grant exactly what
//! the Kubernetes source watches, and the DaemonSet must keep the
//! deployment promises (hostNetwork, NET_ADMIN not privileged, probes...).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use switchyard::config::{Config, SourceKind};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/k8s")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn typed<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let value: serde_yaml::Value =
        serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_path_to_error::deserialize(value).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn kustomization_resources() -> Vec<String> {
    let k: serde_yaml::Value = serde_yaml::from_str(&read("kustomization.yaml")).expect("yaml");
    k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_owned())
        .collect()
}

#[test]
fn every_manifest_decodes_into_its_type() {
    let resources = kustomization_resources();
    let mut seen = BTreeSet::new();
    for entry in std::fs::read_dir(dir()).expect("conf/k8s") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).expect("name");
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") || name == "kustomization.yaml"
        {
            continue;
        }
        let value: serde_yaml::Value =
            serde_yaml::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let result = match kind.as_str() {
            "ServiceAccount" => {
                serde_path_to_error::deserialize::<_, ServiceAccount>(value).map(drop)
            }
            "ClusterRole" => serde_path_to_error::deserialize::<_, ClusterRole>(value).map(drop),
            "ClusterRoleBinding" => {
                serde_path_to_error::deserialize::<_, ClusterRoleBinding>(value).map(drop)
            }
            "ConfigMap" => serde_path_to_error::deserialize::<_, ConfigMap>(value).map(drop),
            "Role" => serde_path_to_error::deserialize::<_, Role>(value).map(drop),
            "RoleBinding" => serde_path_to_error::deserialize::<_, RoleBinding>(value).map(drop),
            "DaemonSet" => serde_path_to_error::deserialize::<_, DaemonSet>(value).map(drop),
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        seen.insert(name.to_owned());
    }
    for r in &resources {
        assert!(
            seen.contains(r),
            "kustomization lists {r}, which is not a manifest here"
        );
    }
    for s in &seen {
        let patch = s.ends_with("-patch.yaml");
        assert!(
            resources.contains(s) || patch,
            "{s} is neither a resource of the kustomization nor a patch"
        );
    }
}

#[test]
fn cluster_role_grants_exactly_what_the_source_watches() {
    let role: ClusterRole = typed("clusterrole.yaml");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        let verbs: BTreeSet<String> = rule.verbs.iter().cloned().collect();
        let expected: BTreeSet<String> = switchyard::sources::kube::VERBS
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(verbs, expected, "read-only verbs, nothing more");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                assert!(granted.insert((group.clone(), resource)), "granted twice");
            }
        }
    }
    let watched: BTreeSet<(String, String)> = switchyard::sources::kube::watched_resources()
        .into_iter()
        .map(|(g, r)| (g.to_owned(), r.to_owned()))
        .collect();
    assert_eq!(granted, watched);

    let binding: ClusterRoleBinding = typed("clusterrolebinding.yaml");
    let account: ServiceAccount = typed("serviceaccount.yaml");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.expect("role name")
    );
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
    assert_eq!(subject.namespace, account.metadata.namespace);
}

#[test]
fn shipped_config_selects_the_kubernetes_source() {
    let cm: ConfigMap = typed("configmap.yaml");
    let text = &cm.data.expect("data")["switchyard.yaml"];
    let config = Config::parse(text, Path::new("configmap.yaml")).expect("valid config");
    assert_eq!(config.source.kind, SourceKind::Kubernetes);
    assert_eq!(
        config.policy.directory,
        Path::new("/etc/switchyard/policies")
    );
}

#[test]
fn daemon_set_keeps_the_deployment_promises() {
    let ds: DaemonSet = typed("daemonset.yaml");
    let spec = ds.spec.expect("spec");
    assert_eq!(
        spec.update_strategy.and_then(|s| s.type_).as_deref(),
        Some("RollingUpdate")
    );
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("switchyard"));
    let tolerations = pod.tolerations.clone().unwrap_or_default();
    for effect in ["NoExecute", "NoSchedule"] {
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists")
                    && t.key.is_none()
                    && t.effect.as_deref() == Some(effect)),
            "tolerates every {effect} taint, as kube-proxy does"
        );
    }
    let c = &pod.containers[0];
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.add, Some(vec!["NET_ADMIN".to_owned()]));
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    for probe in [&c.readiness_probe, &c.liveness_probe] {
        let get = probe
            .clone()
            .and_then(|p| p.http_get)
            .expect("httpGet probe");
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
        );
    }
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some()
    );
    let node_name = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from)
        .and_then(|v| v.field_ref)
        .map(|f| f.field_path);
    assert_eq!(node_name.as_deref(), Some("spec.nodeName"));
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let policies = mounts
        .iter()
        .find(|m| m.mount_path == "/etc/switchyard/policies")
        .expect("policies mounted");
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == policies.name)
        .expect("policies volume");
    let policies_cm: ConfigMap = typed("policies.yaml");
    assert_eq!(volume.config_map.map(|c| c.name), policies_cm.metadata.name);
}

#[test]
fn io_uring_seccomp_profile_allows_io_uring() {
    let text = read("seccomp/switchyard-io-uring.json");
    let profile: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    for rule in profile["syscalls"].as_array().expect("syscalls") {
        for name in rule["names"].as_array().expect("names") {
            let name = name.as_str().expect("name");
            assert!(!name.starts_with("io_uring"), "{name} must not be denied");
        }
    }
    let patch: DaemonSet = typed("seccomp-io-uring-patch.yaml");
    let pod = patch.spec.expect("spec").template.spec.expect("pod");
    let profile = pod.containers[0]
        .security_context
        .clone()
        .and_then(|s| s.seccomp_profile)
        .expect("profile");
    assert_eq!(
        profile.localhost_profile.as_deref(),
        Some("switchyard-io-uring.json")
    );
}

#[test]
fn module_cache_dir_is_a_writable_volume_that_outlives_the_pod() {
    let cm: ConfigMap = typed("configmap.yaml");
    let text = &cm.data.expect("data")["switchyard.yaml"];
    let config = Config::parse(text, Path::new("configmap.yaml")).expect("valid config");
    let cache = config.policy.cache_dir.expect("policy.cacheDir is set");
    let ds: DaemonSet = typed("daemonset.yaml");
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| Path::new(&m.mount_path) == cache)
        .expect("policy.cacheDir is mounted (the root filesystem is read-only)");
    assert_ne!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == mount.name)
        .expect("cache volume");
    assert!(volume.host_path.is_some(), "a hostPath survives a rollout");
}

#[test]
fn policy_configmap_role_grants_that_one_configmap_read_only() {
    let cm: ConfigMap = typed("configmap.yaml");
    let text = &cm.data.expect("data")["switchyard.yaml"];
    let config = Config::parse(text, Path::new("configmap.yaml")).expect("valid config");
    let wanted = config.policy.config_map.expect("policy.configMap is set");
    let policies: ConfigMap = typed("policies.yaml");
    assert_eq!(
        policies.metadata.name.as_deref(),
        Some(wanted.name.as_str())
    );
    assert_eq!(
        policies.metadata.namespace.as_deref(),
        Some(wanted.namespace.as_str())
    );
    let role: Role = typed("policies-role.yaml");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(wanted.namespace.as_str())
    );
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rule.resources.as_deref(),
        Some(&["configmaps".to_owned()][..])
    );
    assert_eq!(rule.resource_names.as_deref(), Some(&[wanted.name][..]));
    assert_eq!(rule.verbs, ["get", "list", "watch"]);
    let binding: RoleBinding = typed("policies-rolebinding.yaml");
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let account: ServiceAccount = typed("serviceaccount.yaml");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
}

#[test]
fn events_role_grants_what_the_event_writer_does_and_nothing_more() {
    let role: ClusterRole = typed("events-clusterrole.yaml");
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    let rule = &rules[0];
    assert_eq!(
        rule.api_groups.as_deref(),
        Some(&["events.k8s.io".to_owned()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["events".to_owned()][..]));
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    let expected: BTreeSet<&str> = switchyard::sources::kube::events::VERBS
        .into_iter()
        .collect();
    assert_eq!(verbs, expected);
    let binding: ClusterRoleBinding = typed("events-clusterrolebinding.yaml");
    assert_eq!(Some(binding.role_ref.name), role.metadata.name);
    let account: ServiceAccount = typed("serviceaccount.yaml");
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
}
