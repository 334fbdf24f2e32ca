//! Where a consumer's events come from: a namespace over HTTP (`[[pull]]`,
//! Azure or another gridfn), or a push subscription of the namespace this
//! gridfn serves, taken from its broker directly. Both answer in the
//! data plane's terms (lock tokens, delivery counts, failed tokens), so the
//! consumer treats them alike.

use std::sync::Arc;
use std::time::Duration;

use super::client::{BrokerProperties, Client, Delivery, ErrorDetail, FailedLockToken, Settled};
use crate::namespace::broker::{Broker, Settle, Subscription};

pub enum Source {
    Remote(Box<Client>),
    /// A push subscription of the namespace gridfn serves.
    Local {
        broker: Arc<Broker>,
        subscription: Arc<Subscription>,
    },
}

impl Source {
    /// Up to `max_events` events, after waiting up to `max_wait` for the first.
    pub async fn receive(&self, max_events: u32, max_wait: Duration) -> anyhow::Result<Vec<Delivery>> {
        match self {
            Source::Remote(client) => client.receive(max_events, max_wait).await,
            Source::Local { broker, subscription } => {
                let received = broker.receive(subscription, max_events as usize, max_wait).await?;
                Ok((received.into_iter())
                    .map(|r| Delivery {
                        broker: BrokerProperties { lock_token: r.lock_token, delivery_count: r.delivery_count },
                        event: r.event,
                    })
                    .collect())
            }
        }
    }

    /// One settle call; tokens that failed are in the answer, as Azure answers.
    pub async fn settle(&self, settle: Settle, tokens: &[String]) -> anyhow::Result<Settled> {
        match self {
            Source::Remote(client) => client.settle(settle, tokens).await,
            Source::Local { broker, subscription } => {
                let settled = broker.settle(subscription, settle, tokens.to_vec()).await?;
                Ok(Settled {
                    succeeded_lock_tokens: settled.succeeded,
                    failed_lock_tokens: (settled.failed.into_iter())
                        .map(|(lock_token, code, message)| FailedLockToken {
                            lock_token,
                            error: ErrorDetail { code: code.to_owned(), message },
                        })
                        .collect(),
                })
            }
        }
    }
}
