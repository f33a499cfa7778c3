//! Group-managed subscriptions: a stream that is one member of a consumer group.

use std::collections::VecDeque;

use futures::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::proto::{self, subscribe_group_response::Event};
use crate::{ConsumedRecord, Error, MAX_MESSAGE_BYTES};

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reset {
    /// The first record still kept.
    #[default]
    Earliest,
    /// Records written from now on.
    Latest,
}

/// The partitions a member reads from now on: (topic, partition), in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub member_epoch: i32,
    pub partitions: Vec<(String, i32)>,
}

/// What a group subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupEvent {
    /// The group moved partitions: records of partitions no longer listed stop coming.
    Assigned(Assignment),
    Record(ConsumedRecord),
}

/// A member of a consumer group (see [`crate::Client::subscribe_group`]). The server
/// assigns it partitions of the subscribed topics and moves them as members come and go;
/// dropping it leaves the group.
pub struct GroupSubscription {
    pub(crate) group: String,
    pub(crate) client: proto::consumer_client::ConsumerClient<Channel>,
    pub(crate) stream: Streaming<proto::SubscribeGroupResponse>,
    pub(crate) pending: VecDeque<ConsumedRecord>,
    pub(crate) assignment: Assignment,
}

impl GroupSubscription {
    pub(crate) async fn start(
        channel: Channel,
        group: &str,
        topics: &[&str],
        reset: Reset,
    ) -> Result<GroupSubscription, Error> {
        let mut client = proto::consumer_client::ConsumerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let reset = match reset {
            Reset::Earliest => proto::StartPosition::StartEarliest,
            Reset::Latest => proto::StartPosition::StartLatest,
        };
        let stream = client
            .subscribe_group(proto::SubscribeGroupRequest {
                group: group.to_string(),
                topics: topics.iter().map(|t| t.to_string()).collect(),
                reset: reset as i32,
                max_records: 0,
                assignor: String::new(),
            })
            .await?
            .into_inner();
        Ok(GroupSubscription {
            group: group.to_string(),
            client,
            stream,
            pending: VecDeque::new(),
            assignment: Assignment::default(),
        })
    }

    /// The next assignment change or record; `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<GroupEvent, Error>> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                return Some(Ok(GroupEvent::Record(record)));
            }
            let message = match self.stream.next().await? {
                Ok(message) => message,
                Err(status) => return Some(Err(Error::from(status))),
            };
            match message.event {
                Some(Event::Assignment(assignment)) => {
                    self.assignment = Assignment {
                        member_id: assignment.member_id,
                        member_epoch: assignment.member_epoch,
                        partitions: assignment
                            .partitions
                            .into_iter()
                            .flat_map(|t| {
                                let topic = t.topic;
                                t.partitions.into_iter().map(move |p| (topic.clone(), p))
                            })
                            .collect(),
                    };
                    return Some(Ok(GroupEvent::Assigned(self.assignment.clone())));
                }
                Some(Event::Records(records)) => self.pending.extend(records.records),
                None => {}
            }
        }
    }

    /// The latest assignment.
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }

    /// Commits, as this member, the next offsets to read of partitions of `topic`:
    /// (partition, offset of the last record processed + 1).
    pub async fn commit(&mut self, topic: &str, offsets: &[(i32, i64)]) -> Result<(), Error> {
        let request = crate::commit_request(
            &self.group,
            topic,
            offsets,
            &self.assignment.member_id,
            self.assignment.member_epoch,
        );
        self.client.commit(request).await?;
        Ok(())
    }
}
