//! The service of one release: `<app>-<slot>`, cutover's labels on the
//! service and its containers, the environment, placement, networks,
//! `replicas` tasks restarted by the orchestrator, and `port` published in
//! host mode on a port each node picks.

use crate::docker::{
    LABEL_APP, LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_LOG, LABEL_RELEASE, LABEL_SLOT,
};
use crate::ReleaseSpec;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use cutover_config::SwarmConfig;
use std::collections::HashMap;
use std::time::Duration;

/// The orchestrator restarts a failed task after this long (Docker's
/// default is 5 s: a killed task's replacement would come late).
const RESTART_DELAY: Duration = Duration::from_secs(1);

pub(crate) fn service_spec(
    config: &SwarmConfig,
    instance: &str,
    spec: &ReleaseSpec,
    name: &str,
    reference: &str,
) -> ServiceSpec {
    let labels = labels(config, instance, spec);
    let container = TaskSpecContainerSpec {
        image: Some(reference.to_string()),
        env: Some(env(config, spec)),
        labels: Some(labels.clone()),
        stop_grace_period: Some(nanos(config.stop_timeout)),
        ..TaskSpecContainerSpec::default()
    };
    let task = TaskSpec {
        container_spec: Some(container),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(nanos(RESTART_DELAY)),
            max_attempts: Some(0),
            window: None,
        }),
        placement: (!config.constraints.is_empty()).then(|| TaskSpecPlacement {
            constraints: Some(config.constraints.clone()),
            ..TaskSpecPlacement::default()
        }),
        networks: (!config.networks.is_empty()).then(|| {
            config
                .networks
                .iter()
                .map(|network| NetworkAttachmentConfig {
                    target: Some(network.clone()),
                    ..NetworkAttachmentConfig::default()
                })
                .collect()
        }),
        ..TaskSpec::default()
    };
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(labels),
        task_template: Some(task),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(config.replicas)),
            }),
            ..ServiceSpecMode::default()
        }),
        endpoint_spec: Some(EndpointSpec {
            mode: None,
            ports: Some(vec![EndpointPortConfig {
                protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                target_port: Some(i64::from(config.port)),
                // 0: each task's node picks a free port (read back from
                // the task's PortStatus), so replicas can share a node.
                published_port: None,
                publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                name: None,
            }]),
        }),
        ..ServiceSpec::default()
    }
}

fn labels(config: &SwarmConfig, instance: &str, spec: &ReleaseSpec) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = config
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend([
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_APP.to_string(), spec.app.clone()),
        (LABEL_SLOT.to_string(), spec.slot.to_string()),
        (LABEL_RELEASE.to_string(), spec.version.clone()),
        (LABEL_DEPLOYMENT.to_string(), spec.deployment_id.to_string()),
        (LABEL_LOG.to_string(), spec.log_path.display().to_string()),
    ]);
    labels
}

fn env(config: &SwarmConfig, spec: &ReleaseSpec) -> Vec<String> {
    let mut env: Vec<String> = config
        .env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    env.extend([
        format!("PORT={}", config.port),
        format!("CUTOVER_APP={}", spec.app),
        format!("CUTOVER_SLOT={}", spec.slot),
        format!("CUTOVER_VERSION={}", spec.version),
        format!("CUTOVER_DEPLOYMENT={}", spec.deployment_id),
    ]);
    env
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}
