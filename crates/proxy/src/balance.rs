//! A backend's endpoints at run time, and how one is picked for a request.

use std::sync::Arc;

use meshgate_model::rule::ServiceBackend;

use crate::pool::EndpointPool;

/// A Service backend with a pool per endpoint.
#[derive(Debug)]
pub struct BackendRt {
    /// What the model says about it.
    pub model: Arc<ServiceBackend>,
    /// One pool per ready endpoint, in the model's order.
    pub endpoints: Vec<Arc<EndpointPool>>,
}

impl BackendRt {
    /// Power of two choices on in-flight requests: two random endpoints, the less loaded wins.
    /// Cheap, lock-free, and it steers away from slow endpoints as their queues grow.
    pub fn pick(&self) -> Option<&Arc<EndpointPool>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => {
                let a = fastrand::usize(0..n);
                let mut b = fastrand::usize(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (&self.endpoints[a], &self.endpoints[b]);
                Some(if eb.in_flight() < ea.in_flight() { eb } else { ea })
            }
        }
    }
}
