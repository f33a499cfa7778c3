//! Topic, consumer-group and cluster administration.

use tonic::transport::Channel;

use crate::Error;
use crate::proto;
use crate::proto::admin_client::AdminClient;

pub use proto::reset_group_offsets_request::To as ResetTo;
pub use proto::{ClusterInfoResponse as ClusterInfo, GroupDescription, GroupSummary};
pub use proto::{TopicDescription, TopicSummary};

/// The Admin service; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
}

impl Admin {
    pub(crate) fn new(channel: Channel) -> Admin {
        Admin {
            client: AdminClient::new(channel),
        }
    }

    /// Creates `name` with `partitions` (0: the broker's default) and config overrides
    /// under Kafka's names.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &[(&str, &str)],
    ) -> Result<TopicDescription, Error> {
        self.create_topic_with(proto::CreateTopicRequest {
            name: name.to_string(),
            partitions,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .await
    }

    /// Creates a topic with every option of the request (replication factor,
    /// validate-only).
    pub async fn create_topic_with(
        &self,
        request: proto::CreateTopicRequest,
    ) -> Result<TopicDescription, Error> {
        Ok(self
            .client
            .clone()
            .create_topic(request)
            .await?
            .into_inner())
    }

    pub async fn list_topics(&self, include_internal: bool) -> Result<Vec<TopicSummary>, Error> {
        let request = proto::ListTopicsRequest { include_internal };
        Ok(self
            .client
            .clone()
            .list_topics(request)
            .await?
            .into_inner()
            .topics)
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, Error> {
        let request = proto::DescribeTopicRequest {
            name: name.to_string(),
        };
        Ok(self
            .client
            .clone()
            .describe_topic(request)
            .await?
            .into_inner())
    }

    /// Sets and removes config overrides.
    pub async fn alter_topic_configs(
        &self,
        name: &str,
        set: &[(&str, &str)],
        remove: &[&str],
    ) -> Result<TopicDescription, Error> {
        let request = proto::AlterTopicConfigsRequest {
            name: name.to_string(),
            set: set
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            remove: remove.iter().map(|k| k.to_string()).collect(),
        };
        Ok(self
            .client
            .clone()
            .alter_topic_configs(request)
            .await?
            .into_inner())
    }

    /// Grows `name` to `partitions` in all.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicDescription, Error> {
        let request = proto::AddPartitionsRequest {
            name: name.to_string(),
            partitions,
        };
        Ok(self
            .client
            .clone()
            .add_partitions(request)
            .await?
            .into_inner())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), Error> {
        let request = proto::DeleteTopicRequest {
            name: name.to_string(),
        };
        self.client.clone().delete_topic(request).await?;
        Ok(())
    }

    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, Error> {
        let request = proto::ListGroupsRequest {};
        Ok(self
            .client
            .clone()
            .list_groups(request)
            .await?
            .into_inner()
            .groups)
    }

    /// A group's state, members and, per partition, committed offset and lag.
    pub async fn describe_group(&self, name: &str) -> Result<GroupDescription, Error> {
        let request = proto::DescribeGroupRequest {
            name: name.to_string(),
        };
        Ok(self
            .client
            .clone()
            .describe_group(request)
            .await?
            .into_inner())
    }

    /// Moves the committed offsets of a group without members, for `partitions` of `topic`
    /// (empty: all).
    pub async fn reset_group_offsets(
        &self,
        name: &str,
        topic: &str,
        partitions: &[i32],
        to: ResetTo,
    ) -> Result<GroupDescription, Error> {
        let request = proto::ResetGroupOffsetsRequest {
            name: name.to_string(),
            topic: topic.to_string(),
            partitions: partitions.to_vec(),
            to: Some(to),
        };
        Ok(self
            .client
            .clone()
            .reset_group_offsets(request)
            .await?
            .into_inner())
    }

    pub async fn delete_group(&self, name: &str) -> Result<(), Error> {
        let request = proto::DeleteGroupRequest {
            name: name.to_string(),
        };
        self.client.clone().delete_group(request).await?;
        Ok(())
    }

    pub async fn cluster_info(&self) -> Result<ClusterInfo, Error> {
        let request = proto::ClusterInfoRequest {};
        Ok(self
            .client
            .clone()
            .cluster_info(request)
            .await?
            .into_inner())
    }
}
