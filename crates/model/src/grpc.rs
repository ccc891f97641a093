//! GRPCRoute, compiled as the HTTP/2 requests gRPC calls are: a method match is a match on
//! the path `/{service}/{method}` (Exact: the path itself, or the service's prefix, or any
//! service with that method; RegularExpression: the same with the patterns), header matches and
//! the header-modifier and mirror filters are the HTTPRoute ones, and the backends are spoken
//! to over HTTP/2 (h2c) whatever their Service's `appProtocol`. One route table serves both
//! kinds; a route's precedence is the Gateway API's.

use meshgate_api::gw::{GrpcRoute, HttpRoute};
use serde_json::{Value, json};

/// The HTTPRoute a GRPCRoute serves as (same metadata, parents, hostnames, filters and
/// backends; method matches as path matches). `Err` names the field that does not convert.
pub(crate) fn as_http_route(route: &GrpcRoute) -> Result<HttpRoute, (String, String)> {
    let mut spec = serde_json::to_value(&route.spec).map_err(|e| (String::from("spec"), e.to_string()))?;
    if let Some(rules) = spec.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            let Some(matches) = rule.get_mut("matches").and_then(Value::as_array_mut) else { continue };
            for m in matches {
                let Some(obj) = m.as_object_mut() else { continue };
                if let Some(method) = obj.remove("method") {
                    obj.insert("path".into(), path_match(&method));
                }
            }
        }
    }
    let value = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": route.metadata,
        "spec": spec,
    });
    serde_json::from_value(value)
        .map_err(|e| (String::from("spec.rules"), format!("cannot be served as HTTP/2 routes: {e}")))
}

/// `/{service}/{method}` as a path match.
fn path_match(method: &Value) -> Value {
    let regex = method.get("type").and_then(Value::as_str) == Some("RegularExpression");
    let service = method.get("service").and_then(Value::as_str);
    let name = method.get("method").and_then(Value::as_str);
    match (regex, service, name) {
        (false, Some(s), Some(m)) => json!({"type": "Exact", "value": format!("/{s}/{m}")}),
        (false, Some(s), None) => json!({"type": "PathPrefix", "value": format!("/{s}")}),
        (false, None, Some(m)) => json!({"type": "RegularExpression", "value": format!("/[^/]+/{}", regex_escape(m))}),
        (true, s, m) => json!({
            "type": "RegularExpression",
            "value": format!("/(?:{})/(?:{})", s.unwrap_or("[^/]+"), m.unwrap_or("[^/]+")),
        }),
        (false, None, None) => json!({"type": "PathPrefix", "value": "/"}),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::path_match;
    use serde_json::json;

    #[test]
    fn method_matches_become_path_matches() {
        let cases = [
            (json!({"service": "shop.Cart", "method": "Add"}), json!({"type": "Exact", "value": "/shop.Cart/Add"})),
            (json!({"type": "Exact", "service": "shop.Cart"}), json!({"type": "PathPrefix", "value": "/shop.Cart"})),
            (json!({"method": "Add"}), json!({"type": "RegularExpression", "value": "/[^/]+/Add"})),
            (
                json!({"type": "RegularExpression", "service": "shop\\..*", "method": "A.*"}),
                json!({"type": "RegularExpression", "value": "/(?:shop\\..*)/(?:A.*)"}),
            ),
            (
                json!({"type": "RegularExpression", "method": "Get.*"}),
                json!({"type": "RegularExpression", "value": "/(?:[^/]+)/(?:Get.*)"}),
            ),
        ];
        for (method, path) in cases {
            assert_eq!(path_match(&method), path, "{method}");
        }
    }
}
