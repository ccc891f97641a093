use std::sync::Arc;

use super::*;

fn load(text: &str) -> Loaded {
    load_str(&Arc::from("routes.yaml"), text)
}

fn errors(text: &str) -> Vec<String> {
    load(text).errors.iter().map(ToString::to_string).collect()
}

#[test]
fn weight_out_of_range_names_file_resource_and_field() {
    let errs = errors(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  rules:
  - backendRefs: [{name: a, port: 80}]
  - backendRefs:
    - name: b
      port: 80
      weight: 2000000
"#,
    );
    assert_eq!(
        errs,
        vec![
            "routes.yaml: HTTPRoute default/shop: spec.rules[1].backendRefs[0].weight: must be 0..1000000, got 2000000"
        ]
    );
}

#[test]
fn unknown_fields_anywhere_are_errors_all_of_them() {
    let errs = errors(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: web, lables: {a: b}}
spec:
  rules:
  - matchs: [{path: {value: /}}]
    backendRefs: [{name: a, port: 80, wieght: 3}]
"#,
    );
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs.contains(
        &"routes.yaml: HTTPRoute web/shop: metadata.lables: unknown field (not in the schema of this kind)".to_string()
    ));
    assert!(errs.iter().any(|e| e.contains("spec.rules[0].matchs: unknown field")));
    assert!(errs.iter().any(|e| e.contains("spec.rules[0].backendRefs[0].wieght: unknown field")));
}

#[test]
fn unknown_kind_and_bad_api_version() {
    let errs = errors(
        "apiVersion: v1\nkind: Servce\nmetadata: {name: x}\n---\napiVersion: v2\nkind: Service\nmetadata: {name: y}\n",
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].starts_with("routes.yaml: kind: unknown kind \"Servce\" (x); meshgate reads"), "{}", errs[0]);
    assert!(errs[1].contains("Service default/y: apiVersion: Service is served as apiVersion v1"), "{}", errs[1]);
}

#[test]
fn malformed_yaml_has_line_and_column() {
    let errs = errors(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: [}\n",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("routes.yaml:7:18: invalid YAML: mismatched bracket"), "{}", errs[0]);
    assert!(errs[0].contains("invalid YAML"), "{}", errs[0]);
}

#[test]
fn type_errors_carry_the_path() {
    let errs = errors("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("routes.yaml: Service default/s: spec.ports[0].port: invalid type"), "{}", errs[0]);
}

#[test]
fn exported_cluster_manifests_load_unchanged() {
    // As `kubectl get svc,endpointslices -o yaml` prints them: a List, status, managedFields,
    // clusterIP(s), ipFamilies, topology hints, conditions, unnamed single port.
    let loaded = load(include_str!("../../testdata/exported-list.yaml"));
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    let kinds: Vec<Kind> = loaded.objects.iter().map(|o| o.id.kind).collect();
    assert_eq!(kinds, vec![Kind::Service, Kind::EndpointSlice, Kind::EndpointSlice, Kind::Service, Kind::Namespace]);
}

#[test]
fn gateway_api_exported_resources_with_status_load() {
    let loaded = load(include_str!("../../testdata/exported-gateway.yaml"));
    assert!(loaded.errors.is_empty(), "{}", loaded.errors);
    assert_eq!(loaded.objects.len(), 4);
}

#[test]
fn defaults_namespace() {
    let loaded = load("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n");
    assert!(loaded.errors.is_empty());
    assert_eq!(loaded.objects[0].id.to_string(), "Service default/s");
    assert_eq!(loaded.objects[0].resource.metadata().namespace.as_deref(), Some("default"));
}

#[test]
fn listener_conflicts_and_invalid_headers() {
    let errs = errors(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: meshgate
  listeners:
  - {name: web, port: 8080, protocol: HTTP}
  - {name: tls, port: 8080, protocol: HTTPS, tls: {certificateRefs: [{name: c}]}}
  - {name: web, port: 8081, protocol: HTTP, hostname: "*.a.com"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - matches: [{headers: [{name: "bad header", value: x}], path: {type: Exact, value: "no-slash"}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: "x:y", value: v}]}
    backendRefs: [{name: a}]
"#,
    );
    assert!(
        errs.iter().any(|e| e.contains("spec.listeners[1].protocol: HTTPS conflicts with listener \"web\"")),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("spec.listeners[2].name: duplicate listener name")), "{errs:#?}");
    assert!(
        errs.iter()
            .any(|e| e
                .contains("spec.rules[0].matches[0].headers[0].name: \"bad header\" is not a valid HTTP header name")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("spec.rules[0].matches[0].path.value: \"no-slash\" must be an absolute path")),
        "{errs:#?}"
    );
    assert!(errs.iter().any(|e| e.contains("spec.rules[0].filters[0].requestHeaderModifier.set[0].name")), "{errs:#?}");
    assert!(
        errs.iter().any(|e| e.contains("spec.rules[0].backendRefs[0].port: required when referring to a Service")),
        "{errs:#?}"
    );
}

#[test]
fn documents_are_split_with_line_numbers() {
    let docs = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\n");
    assert_eq!(docs, vec![(1, "a: 1\n"), (3, "b: 2\n"), (5, "c: 3\n")]);
}

#[test]
fn duplicates_name_both_files() {
    let mut objects = load("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n").objects;
    objects
        .extend(load_str(&Arc::from("other.yaml"), "\n\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n").objects);
    let (set, errs) = crate::ResourceSet::from_objects(objects);
    assert_eq!(set.len(), 1);
    assert_eq!(
        errs.to_string(),
        "other.yaml: Service default/s: metadata.name: duplicate: Service default/s is already defined in routes.yaml:1"
    );
}

#[test]
fn traffic_policy_bad_values_name_their_fields() {
    let errs = errors(
        r#"
apiVersion: meshgate.io/v1alpha1
kind: TrafficPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRefs: [{kind: Deployment, name: inventory}, {kind: Service, name: inventory, port: 70000}]
  loadBalancer: {type: ConsistentHash}
  timeouts: {request: -1s, perTry: 10s, connect: 0s, idle: forever}
  retry:
    attempts: 1000
    codes: [200]
    backoff: 2m
    budget: {percent: 150, minRetriesPerSecond: -3}
  connectionLimits: {maxConnections: 0, maxRequests: -5}
  outlierDetection: {consecutive5xx: -1, baseEjectionTime: 30s, maxEjectionTime: 10s, maxEjectionPercent: 101}
---
apiVersion: meshgate.io/v1alpha1
kind: FaultInjection
metadata: {name: f}
spec:
  delay: {fixedDelay: 2h, percentage: 120}
  abort: {httpStatus: 99}
"#,
    );
    let expect = [
        "TrafficPolicy shop/p: spec.targetRefs[0].kind: only core Services can be targeted",
        "TrafficPolicy shop/p: spec.targetRefs[1].port: must be 1..65535, got 70000",
        "TrafficPolicy shop/p: spec.loadBalancer.consistentHash: required when type is ConsistentHash",
        "TrafficPolicy shop/p: spec.timeouts.request: \"-1s\" is not a Gateway API duration",
        "TrafficPolicy shop/p: spec.timeouts.connect: must be above 0s",
        "TrafficPolicy shop/p: spec.timeouts.idle: \"forever\" is not a Gateway API duration",
        "TrafficPolicy shop/p: spec.retry.attempts: must be 0..10, got 1000",
        "TrafficPolicy shop/p: spec.retry.codes[0]: must be 400..599, got 200",
        "TrafficPolicy shop/p: spec.retry.backoff: must be at most 60s",
        "TrafficPolicy shop/p: spec.retry.budget.percent: must be 0..100, got 150",
        "TrafficPolicy shop/p: spec.retry.budget.minRetriesPerSecond: must be 0..100000, got -3",
        "TrafficPolicy shop/p: spec.connectionLimits.maxConnections: must be 1..1000000, got 0",
        "TrafficPolicy shop/p: spec.connectionLimits.maxRequests: must be 1..1000000, got -5",
        "TrafficPolicy shop/p: spec.outlierDetection.consecutive5xx: must be 0..1000, got -1",
        "TrafficPolicy shop/p: spec.outlierDetection.maxEjectionTime: must not be below baseEjectionTime",
        "TrafficPolicy shop/p: spec.outlierDetection.maxEjectionPercent: must be 0..100, got 101",
        "FaultInjection default/f: spec.delay.fixedDelay: must be at most 1h",
        "FaultInjection default/f: spec.delay.percentage: must be 0..100, got 120",
        "FaultInjection default/f: spec.abort.httpStatus: must be 200..599, got 99",
    ];
    for e in expect {
        assert!(errs.iter().any(|x| x.contains(e)), "missing {e:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expect.len(), "{errs:#?}");
}
