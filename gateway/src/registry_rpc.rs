//! The `NodeRegistry` gRPC service (nodes register and heartbeat).

use std::time::Instant;

use cyxcloud_proto::v1;
use tonic::{Request, Response, Status};

use crate::Gateway;
use crate::control::bearer;

#[derive(Clone, Debug)]
pub struct RegistryService {
    gw: Gateway,
}

impl RegistryService {
    pub fn new(gw: Gateway) -> Self {
        RegistryService { gw }
    }
}

#[tonic::async_trait]
impl v1::node_registry_server::NodeRegistry for RegistryService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let started = Instant::now();
        let key = bearer(request.metadata()).map(String::from);
        let r = self
            .gw
            .registry
            .register(request.get_ref(), key.as_deref(), request.remote_addr())
            .await;
        let code = r.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
        self.gw.metrics.observe("Register", code, started);
        r.map(Response::new).map_err(Status::from)
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let started = Instant::now();
        let key = bearer(request.metadata()).map(String::from);
        let r = self
            .gw
            .registry
            .heartbeat(request.get_ref(), key.as_deref(), request.remote_addr())
            .await;
        let code = r.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
        self.gw.metrics.observe("Heartbeat", code, started);
        r.map(Response::new).map_err(Status::from)
    }
}
