//! The membership proof: both ends of a connection show, with a MAC keyed by the network key over
//! both peer ids and a nonce from each side, that they hold the key. The dialer proves first; the
//! listener gives nothing but a nonce until it has checked that proof. Message layout and flow are
//! in `shoal_proto::wire`; the threat model in ARCHITECTURE.md.
//!
//! Each end admits the other (serves its requests) before the other can know the exchange
//! succeeded, and asks it things only once the other has admitted it:
//! - the listener admits the dialer before it sends its own proof;
//! - the dialer, once that proof checks out, admits the listener, then closes the stream, and
//!   from then on asks the listener things;
//! - the listener asks the dialer things once it has seen that close.
//!
//! So no request from a member is ever dropped because it came a moment before its sender's proof
//! was recorded (a new node's first DHT lookup, which its bootstrap peer used to drop now and
//! then, leaving the node alone in the network).

use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::PeerId;
use shoal_proto::wire::{self, Challenge, Proof, Role, WireMessage};
use tokio::sync::{mpsc, oneshot, watch};

use super::accept::{accept_streams, Admit};
use super::transfer::read_message;
use super::{Command, NetworkKey, MEMBERSHIP_PROTOCOL};

/// The whole exchange must finish within this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Proofs answered at once; more are refused.
const CONCURRENT_PROOFS: usize = 64;

fn nonce() -> [u8; 32] {
    rand::random()
}

/// Dialer side: proves membership to `peer` and checks its proof; reports the outcome to the
/// swarm task.
pub(super) async fn prove(
    mut control: libp2p_stream::Control,
    key: Arc<NetworkKey>,
    local: PeerId,
    peer: PeerId,
    commands: mpsc::Sender<Command>,
) {
    let exchange = async {
        let mut stream = control
            .open_stream(peer, MEMBERSHIP_PROTOCOL)
            .await
            .map_err(|e| format!("opening the proof stream: {e}"))?;
        let ours = nonce();
        write(&mut stream, &Challenge { nonce: ours }.encode()).await?;
        let theirs: Challenge = read_message(&mut stream, EXCHANGE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let (local_id, peer_id) = (local.to_bytes(), peer.to_bytes());
        let mac = wire::membership_mac(
            key.bytes(),
            Role::Dialer,
            &local_id,
            &peer_id,
            &ours,
            &theirs.nonce,
        );
        write(&mut stream, &Proof { mac }.encode()).await?;
        let answer: Proof = read_message(&mut stream, EXCHANGE_TIMEOUT)
            .await
            .map_err(|e| format!("no proof from the listener: {e}"))?;
        let expected = wire::membership_mac(
            key.bytes(),
            Role::Listener,
            &peer_id,
            &local_id,
            &ours,
            &theirs.nonce,
        );
        if !wire::mac_eq(&answer.mac, &expected) {
            return Err("the listener's MAC does not match the network key".to_owned());
        }
        Ok::<_, String>(stream)
    };
    let stream = match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(reason)) => {
            let _ = commands.send(Command::FailedProof(peer, reason)).await;
            return;
        }
        Err(_) => {
            let _ = commands
                .send(Command::FailedProof(peer, "timed out".into()))
                .await;
            return;
        }
    };
    // The listener admitted us before it sent its proof. Admit it before closing: the close is
    // what tells it that it may ask us things.
    if !admit(&commands, peer).await {
        return;
    }
    drop(stream);
    let _ = commands.send(Command::Proved(peer)).await;
}

/// Asks the swarm task to admit `peer` and waits until it has; `false` when it refused (and has
/// already disconnected the peer) or is gone.
async fn admit(commands: &mpsc::Sender<Command>, peer: PeerId) -> bool {
    let (admitted, answer) = oneshot::channel();
    if commands.send(Command::Admit(peer, admitted)).await.is_err() {
        return false;
    }
    answer.await.unwrap_or(false)
}

/// Listener side: answers proof streams, at most [`CONCURRENT_PROOFS`] at once.
pub(super) async fn answer_proofs(
    incoming: libp2p_stream::IncomingStreams,
    key: Arc<NetworkKey>,
    local: PeerId,
    commands: mpsc::Sender<Command>,
    stop: watch::Receiver<bool>,
) {
    accept_streams(
        incoming,
        Admit::Anyone,
        CONCURRENT_PROOFS,
        "membership proof",
        stop,
        |peer, stream| {
            let (key, commands) = (key.clone(), commands.clone());
            async move {
                let answered = answer(stream, &key, local, peer, &commands);
                let outcome = match tokio::time::timeout(EXCHANGE_TIMEOUT, answered).await {
                    Ok(Ok(Answered::Proved)) => Command::Proved(peer),
                    // The swarm task refused it and disconnected it already.
                    Ok(Ok(Answered::Refused)) => return,
                    Ok(Err(reason)) => Command::FailedProof(peer, reason),
                    Err(_) => Command::FailedProof(peer, "timed out".into()),
                };
                let _ = commands.send(outcome).await;
            }
        },
    )
    .await;
}

/// How a listener's side of the exchange ended, when the dialer's proof checked out.
enum Answered {
    /// Both ends admitted each other.
    Proved,
    /// The swarm task refused the dialer (the allowlist).
    Refused,
}

async fn answer(
    mut stream: libp2p::Stream,
    key: &NetworkKey,
    local: PeerId,
    peer: PeerId,
    commands: &mpsc::Sender<Command>,
) -> Result<Answered, String> {
    let theirs: Challenge = read_message(&mut stream, EXCHANGE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let ours = nonce();
    write(&mut stream, &Challenge { nonce: ours }.encode()).await?;
    let proof: Proof = read_message(&mut stream, EXCHANGE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let (local_id, peer_id) = (local.to_bytes(), peer.to_bytes());
    let expected = wire::membership_mac(
        key.bytes(),
        Role::Dialer,
        &peer_id,
        &local_id,
        &theirs.nonce,
        &ours,
    );
    if !wire::mac_eq(&proof.mac, &expected) {
        return Err("the dialer's MAC does not match the network key".to_owned());
    }
    // Admitted before it can know: its first request may follow our proof at once.
    if !admit(commands, peer).await {
        return Ok(Answered::Refused);
    }
    let mac = wire::membership_mac(
        key.bytes(),
        Role::Listener,
        &local_id,
        &peer_id,
        &theirs.nonce,
        &ours,
    );
    write(&mut stream, &Proof { mac }.encode()).await?;
    let _ = stream.close().await;
    // Wait for the dialer to read the proof and close, so closing here cannot cut it short.
    // Its close also says it has admitted us.
    let mut rest = [0u8; 1];
    let _ = stream.read(&mut rest).await;
    Ok(Answered::Proved)
}

async fn write(stream: &mut libp2p::Stream, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    stream.flush().await.map_err(|e| format!("writing: {e}"))
}
