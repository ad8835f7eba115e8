//! The valid document the tests of every part start from and break one field of.

pub(super) const GOOD: &str = r#"
id: 3f0c6d52-1b7e-4a39-9d2a-8e5b7c4a1f01
metadata:
  name: hello
  namespace: examples
  deviceId: edge-01/apps
spec:
  applicationId: hello
  deploymentProfile:
    type: custom
    components:
      - name: hello
        properties:
          repository: file:hello.wasm
          revision: 0.1.0
        x-wasmgate-extensions:
          trigger:
            http: {route: /hello/}
          limits: {memory: 32Mi, timeout: 5s}
          future-option: 1
  parameters:
    greeting:
      value: Hi
      targets: [{pointer: greeting, components: [hello]}]
    count:
      value: 3
      targets: [{pointer: count, components: [hello]}]
"#;
