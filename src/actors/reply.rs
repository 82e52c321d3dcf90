//! Requests whose reply comes back to an actor as a message: the reply port is watched on its
//! own task, so an answer becomes `deliver(answer)` and a port dropped unanswered (the asked
//! actor died with the request in its mailbox, or never took it) becomes `lost()`. Nothing is
//! sent and forgotten.

use ractor::{ActorRef, Message, RpcReplyPort};

/// Sends `make(reply)` to `actor`; its answer (or its loss) reaches `to` as a message. `false`
/// when the send itself failed (the actor is not running): nothing will arrive then.
pub(crate) fn request<M: Message, A: Message, T: Send + 'static>(
    to: &ActorRef<A>,
    actor: &ActorRef<M>,
    make: impl FnOnce(RpcReplyPort<T>) -> M,
    deliver: impl FnOnce(T) -> A + Send + 'static,
    lost: impl FnOnce() -> A + Send + 'static,
) -> bool {
    let (tx, rx) = ractor::concurrency::oneshot();
    if actor.cast(make(tx.into())).is_err() {
        return false;
    }
    forward(to, rx, deliver, lost);
    true
}

/// Waits for a reply on its own task and hands it to `to` as a message.
pub(crate) fn forward<A: Message, T: Send + 'static>(
    to: &ActorRef<A>,
    rx: ractor::concurrency::OneshotReceiver<T>,
    deliver: impl FnOnce(T) -> A + Send + 'static,
    lost: impl FnOnce() -> A + Send + 'static,
) {
    let to = to.clone();
    tokio::spawn(async move {
        let msg = match rx.await {
            Ok(value) => deliver(value),
            Err(_) => lost(),
        };
        // An actor that stopped (an ended run) no longer wants the answer.
        let _ = to.cast(msg);
    });
}
