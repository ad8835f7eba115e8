//! Triggers: what makes a workload run. The reconciler hands the running workloads and
//! their trigger settings here; HTTP routes are published as one table that the ingress
//! reads through [`HttpTrigger`], timers run here. Another event source (MQTT) belongs
//! here too, next to these.

mod http;
mod timer;

pub use http::{
    error_response, normalize_prefix, shared_routes, HttpRoute, HttpTrigger, ResponseBody, Route,
    RouteTable, SharedRoutes,
};
pub use timer::{start_timer, TimerHandle, TimerSchedule};
