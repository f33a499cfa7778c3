//! Deploying and running Wasm functions (the Functions service).

use futures::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::Error;
use crate::proto;
use crate::proto::functions_client::FunctionsClient;

pub use proto::{
    DeployFunctionRequest, FunctionDescription, FunctionLimits, FunctionLogLine, FunctionPartition,
    FunctionSummary,
};

/// The largest deploy sent (the server takes up to 128 MiB, so it can name its own,
/// smaller, component limit).
const MAX_DEPLOY_BYTES: usize = 128 << 20;

/// The Functions service; cheap to clone.
#[derive(Clone)]
pub struct Functions {
    client: FunctionsClient<Channel>,
}

impl Functions {
    pub(crate) fn new(channel: Channel) -> Functions {
        Functions {
            client: FunctionsClient::new(channel)
                .max_encoding_message_size(MAX_DEPLOY_BYTES)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES),
        }
    }

    /// Deploys (or redeploys) a function; its version.
    pub async fn deploy(&self, request: DeployFunctionRequest) -> Result<u64, Error> {
        Ok(self
            .client
            .clone()
            .deploy(request)
            .await?
            .into_inner()
            .version)
    }

    pub async fn list(&self) -> Result<Vec<FunctionSummary>, Error> {
        let request = proto::ListFunctionsRequest {};
        Ok(self
            .client
            .clone()
            .list(request)
            .await?
            .into_inner()
            .functions)
    }

    pub async fn describe(&self, name: &str) -> Result<FunctionDescription, Error> {
        let request = proto::DescribeFunctionRequest {
            name: name.to_string(),
        };
        Ok(self.client.clone().describe(request).await?.into_inner())
    }

    pub async fn pause(&self, name: &str) -> Result<(), Error> {
        let request = proto::PauseFunctionRequest {
            name: name.to_string(),
        };
        self.client.clone().pause(request).await?;
        Ok(())
    }

    pub async fn resume(&self, name: &str) -> Result<(), Error> {
        let request = proto::ResumeFunctionRequest {
            name: name.to_string(),
        };
        self.client.clone().resume(request).await?;
        Ok(())
    }

    /// Deletes the function with its progress and kv state.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let request = proto::DeleteFunctionRequest {
            name: name.to_string(),
        };
        self.client.clone().delete(request).await?;
        Ok(())
    }

    /// The function's log lines kept on the node, then (with `follow`) new ones as they
    /// come.
    pub async fn logs(
        &self,
        name: &str,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<FunctionLogLine, Error>> + use<>, Error> {
        let request = proto::FunctionLogsRequest {
            name: name.to_string(),
            follow,
        };
        let stream = self.client.clone().logs(request).await?.into_inner();
        Ok(stream.map(|line| line.map_err(Error::from)))
    }
}
