//! Margo `deviceConstraints`: capacity requirements and eligibility rules, evaluated
//! against a target's capabilities document (`properties` + `labels`). Devices MUST
//! evaluate eligibility before deploying; capacity is checked first.

use crate::units::ByteSize;
use serde_json::Value;

/// Why a target does not fit; the message names the failing requirement or rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Ineligible(pub String);

fn size(value: Option<&Value>) -> Option<u64> {
    value?
        .as_str()?
        .replace(' ', "")
        .parse::<ByteSize>()
        .ok()
        .map(|b| b.0)
}

/// Checks `constraints` (the deployment's `deviceConstraints`) against `capabilities`.
pub fn check(constraints: Option<&Value>, capabilities: &Value) -> Result<(), Ineligible> {
    let Some(constraints) = constraints else {
        return Ok(());
    };
    let properties = &capabilities["properties"];
    if let Some(capacity) = constraints.get("capacityRequirements") {
        check_capacity(capacity, properties)?;
    }
    let Some(rules) = constraints
        .get("eligibilityRules")
        .and_then(Value::as_array)
    else {
        return Ok(());
    };
    if rules.is_empty() {
        return Ok(());
    }
    let labels = capabilities.get("labels").cloned().unwrap_or(Value::Null);
    for rule in rules {
        if rule_matches(rule, properties, &labels)? {
            return Ok(());
        }
    }
    Err(Ineligible(format!(
        "none of the {} eligibility rules matches this target",
        rules.len()
    )))
}

fn check_capacity(capacity: &Value, properties: &Value) -> Result<(), Ineligible> {
    if let Some(cpu) = capacity.get("cpu") {
        let cores = cpu["cores"].as_f64().ok_or_else(|| {
            Ineligible("capacityRequirements.cpu.cores: expected a number".into())
        })?;
        let archs: Option<Vec<&str>> = cpu
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        let entries = properties["cpus"].as_array().cloned().unwrap_or_default();
        let fits = entries.iter().any(|entry| {
            entry["cores"].as_f64().is_some_and(|c| c >= cores)
                && archs.as_ref().is_none_or(|a| {
                    entry["architecture"]
                        .as_str()
                        .is_some_and(|arch| a.contains(&arch))
                })
        });
        if !fits {
            return Err(Ineligible(format!(
                "capacityRequirements.cpu: needs {cores} cores{} on one CPU set; the target has {}",
                archs
                    .map(|a| format!(" of {}", a.join("/")))
                    .unwrap_or_default(),
                Value::Array(entries)
            )));
        }
    }
    for field in ["memory", "storage"] {
        if let Some(needed) = capacity.get(field) {
            let needed_bytes = size(Some(needed)).ok_or_else(|| {
                Ineligible(format!(
                    "capacityRequirements.{field}: {needed} is not a size like 64Mi"
                ))
            })?;
            let have = size(properties.get(field)).unwrap_or(0);
            if needed_bytes > have {
                return Err(Ineligible(format!(
                    "capacityRequirements.{field}: needs {needed}, the target has {}",
                    properties.get(field).cloned().unwrap_or(Value::Null)
                )));
            }
        }
    }
    Ok(())
}

fn rule_matches(rule: &Value, properties: &Value, labels: &Value) -> Result<bool, Ineligible> {
    let mut matched = true;
    if let Some(selector) = rule.get("propertySelector") {
        matched &= selector_matches(selector, &|key| properties.pointer(key).cloned())?;
    }
    if let Some(selector) = rule.get("labelSelector") {
        matched &= selector_matches(selector, &|key| labels.get(key).cloned())?;
    }
    Ok(matched)
}

fn selector_matches(
    selector: &Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<bool, Ineligible> {
    let expressions = selector["matchExpressions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for expression in &expressions {
        if !expression_matches(expression, lookup)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// JSON equality, with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
        _ => a == b,
    }
}

fn is_scalar(v: &Value) -> bool {
    v.is_string() || v.is_number() || v.is_boolean()
}

fn expression_matches(
    expression: &Value,
    lookup: &dyn Fn(&str) -> Option<Value>,
) -> Result<bool, Ineligible> {
    let key = expression["key"]
        .as_str()
        .ok_or_else(|| Ineligible("matchExpressions[].key: expected a string".into()))?;
    let operator = expression["operator"].as_str().ok_or_else(|| {
        Ineligible(format!(
            "matchExpressions[{key}].operator: expected a string"
        ))
    })?;
    let values = expression["values"].as_array().cloned().unwrap_or_default();
    let value = lookup(key);
    let one_of = |v: &Value| values.iter().any(|w| same(v, w));
    let result = match operator {
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "In" | "NotIn" => {
            let hit = match &value {
                Some(v) if is_scalar(v) => one_of(v),
                Some(Value::Array(items)) if items.iter().all(is_scalar) => items.iter().any(one_of),
                _ => false,
            };
            if operator == "In" {
                hit
            } else {
                value.as_ref().is_some_and(|v| is_scalar(v) || v.is_array()) && !hit
            }
        }
        "Gt" | "Lt" => {
            let bound = values
                .first()
                .and_then(Value::as_f64)
                .filter(|_| values.len() == 1)
                .ok_or_else(|| Ineligible(format!("matchExpressions[{key}] {operator}: expected exactly one number in values")))?;
            match value.as_ref().and_then(Value::as_f64) {
                Some(v) if operator == "Gt" => v > bound,
                Some(v) => v < bound,
                None => false,
            }
        }
        "ContainsAll" | "ContainsAny" => {
            let items = expression["itemSelector"]["matchExpressions"]
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| Ineligible(format!("matchExpressions[{key}] {operator}: itemSelector needs expressions")))?;
            let elements = match &value {
                Some(Value::Array(elements)) => elements.clone(),
                _ => Vec::new(),
            };
            let mut found = false;
            for element in &elements {
                let element_lookup = |k: &str| element.pointer(k).cloned();
                let mut results = Vec::new();
                for item in items {
                    results.push(expression_matches(item, &element_lookup)?);
                }
                let ok = if operator == "ContainsAll" {
                    results.iter().all(|r| *r)
                } else {
                    results.iter().any(|r| *r)
                };
                if ok {
                    found = true;
                    break;
                }
            }
            found
        }
        other => {
            return Err(Ineligible(format!(
                "matchExpressions[{key}].operator {other:?}: expected In, NotIn, Exists, DoesNotExist, Gt, Lt, ContainsAll or ContainsAny"
            )))
        }
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target() -> Value {
        json!({
            "properties": {
                "cpus": [{"cores": 0.5, "architecture": "amd64"}, {"cores": 2, "architecture": "arm64"}],
                "memory": "128Mi",
                "storage": "1Gi",
                "vendor": "Acme",
                "interfaces": [{"type": "ethernet"}, {"type": "canbus"}],
                "ram": 8
            },
            "labels": {"tier": "apps", "wasm": true, "zones": ["a", "b"], "line": "3"}
        })
    }

    fn rule(selector: &str, expressions: Value) -> Value {
        json!({"eligibilityRules": [{selector: {"matchExpressions": expressions}}]})
    }

    #[test]
    fn capacity() {
        let t = target();
        assert!(check(
            Some(&json!({"capacityRequirements": {"cpu": {"cores": 2}}})),
            &t
        )
        .is_ok());
        assert!(check(
            Some(
                &json!({"capacityRequirements": {"cpu": {"cores": 2, "architectures": ["amd64"]}}})
            ),
            &t
        )
        .is_err());
        assert!(check(
            Some(&json!({"capacityRequirements": {"cpu": {"cores": 3}}})),
            &t
        )
        .is_err());
        assert!(check(
            Some(&json!({"capacityRequirements": {"memory": "64Mi", "storage": "1Gi"}})),
            &t
        )
        .is_ok());
        let err = check(
            Some(&json!({"capacityRequirements": {"memory": "1Gi"}})),
            &t,
        )
        .unwrap_err();
        assert!(err.0.contains("memory"), "{err}");
    }

    #[test]
    fn operators() {
        let t = target();
        let yes = [
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "In", "values": ["apps", "x"]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "wasm", "operator": "In", "values": [true]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "zones", "operator": "In", "values": ["b"]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "NotIn", "values": ["db"]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "Exists"}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "nope", "operator": "DoesNotExist"}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/ram", "operator": "Gt", "values": [4]}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/ram", "operator": "Lt", "values": [16]}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/vendor", "operator": "In", "values": ["Acme"]}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/interfaces", "operator": "ContainsAny", "itemSelector": {"matchExpressions": [{"key": "/type", "operator": "In", "values": ["canbus"]}]}}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/cpus", "operator": "ContainsAll", "itemSelector": {"matchExpressions": [{"key": "/cores", "operator": "Gt", "values": [1]}, {"key": "/architecture", "operator": "In", "values": ["arm64"]}]}}]),
            ),
        ];
        for r in &yes {
            assert!(check(Some(r), &t).is_ok(), "{r}");
        }
        let no = [
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "In", "values": ["db"]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "line", "operator": "In", "values": [3]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "nope", "operator": "NotIn", "values": ["x"]}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "DoesNotExist"}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/ram", "operator": "Gt", "values": [8]}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/vendor", "operator": "In", "values": ["acme"]}]),
            ),
            rule(
                "propertySelector",
                json!([{"key": "/cpus", "operator": "ContainsAll", "itemSelector": {"matchExpressions": [{"key": "/cores", "operator": "Gt", "values": [1]}, {"key": "/architecture", "operator": "In", "values": ["amd64"]}]}}]),
            ),
            rule(
                "labelSelector",
                json!([{"key": "tier", "operator": "In", "values": ["apps"]}, {"key": "wasm", "operator": "In", "values": [false]}]),
            ),
        ];
        for r in &no {
            assert!(check(Some(r), &t).is_err(), "{r}");
        }
        // OR across rules; AND across the selectors of one rule.
        let or = json!({"eligibilityRules": [
            {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}},
            {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["apps"]}]},
             "propertySelector": {"matchExpressions": [{"key": "/vendor", "operator": "Exists"}]}}
        ]});
        assert!(check(Some(&or), &t).is_ok());
        let bad = rule(
            "labelSelector",
            json!([{"key": "tier", "operator": "Near"}]),
        );
        assert!(check(Some(&bad), &t).unwrap_err().0.contains("Near"));
    }
}
