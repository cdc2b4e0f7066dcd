//! The TLS 1.3 security upgrade of the TCP transport: libp2p's TLS handshake (the libp2p TLS
//! specification: mutual authentication by self-signed certificates that carry the node's
//! identity key in a libp2p extension), with AES-GCM preferred over ChaCha20-Poly1305.
//!
//! Why: over TCP the cipher is the largest cost of the peer path beyond what a fill from the
//! origin costs (BENCHMARKS.md, "where the peer path's CPU goes"). noise fixes
//! ChaCha20-Poly1305 and libp2p-tls fixes its suites with ChaCha20-Poly1305 first, while AES-GCM
//! with the AES instructions of today's servers costs less per byte ("Transport": 2.66 against
//! 3.62 CPU s/GiB on quinn). This module builds its own rustls configurations around libp2p-tls'
//! public certificate code, so only the suite order differs from libp2p-tls.
//!
//! How it is negotiated: the TCP transport offers this upgrade first and noise second
//! (multistream-select picks the first both ends speak), so two nodes of this release speak TLS
//! and a node of an earlier release, which offers only noise, still connects. The upgrade answers
//! to `/tls/1.0.0`, libp2p-tls' protocol name: the wire format is libp2p's TLS handshake
//! unchanged and the cipher suite is negotiated inside it, so any libp2p TLS implementation
//! interoperates (with ChaCha20-Poly1305 if it offers nothing else); a name of its own would only
//! make such peers fall back to noise. Each end offers AES-128-GCM, then AES-256-GCM, then
//! ChaCha20-Poly1305, and the accepting end takes its own order, not the dialler's, so two ends
//! of which one is libp2p-tls still agree on AES-GCM.
//!
//! What is checked, on both ends of every connection (the rustls verifiers below): exactly one
//! certificate, which `libp2p_tls::certificate::parse` accepts (well formed, self-signed, within
//! its validity, its libp2p extension signed by the identity key it names), and a TLS 1.3
//! handshake signature made by that certificate's key (`P2pCertificate::verify_signature`). The
//! peer id is the identity key's, taken from the certificate after the handshake. TLS 1.3 only,
//! and no session resumption, so every connection proves its identity afresh.
//!
//! **Invariant:** a TCP connection is always encrypted and its peer id always comes from a
//! verified identity-key signature (this upgrade or noise); there is no plaintext fallback.

use std::net::Ipv4Addr;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt as _};
use futures_rustls::TlsStream;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use libp2p_tls::certificate;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, CommonState, DigitallySignedStruct, DistinguishedName};
use rustls::{SignatureScheme, SupportedCipherSuite};

/// The protocol name multistream-select negotiates (libp2p's TLS handshake).
pub const PROTOCOL: &str = "/tls/1.0.0";
/// The ALPN protocol the libp2p TLS specification names.
const ALPN: &[u8] = b"libp2p";

/// The suites offered, in this node's order of preference: AES-GCM first (the AES instructions
/// make it the cheapest per byte), ChaCha20-Poly1305 last for peers without it.
const CIPHER_SUITES: [SupportedCipherSuite; 3] = [
    TLS13_AES_128_GCM_SHA256,
    TLS13_AES_256_GCM_SHA384,
    TLS13_CHACHA20_POLY1305_SHA256,
];

/// The handshake signature schemes accepted: every one `P2pCertificate::verify_signature` checks
/// (it refuses a scheme other than the certificate's own). libp2p-tls signs with ECDSA P-256.
const SIGNATURE_SCHEMES: [SignatureScheme; 9] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Why the security upgrade could not be built or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// This node's certificate could not be made from its identity.
    #[error("generating the TLS certificate: {0}")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the configuration (a bug, not an outside input).
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed: the peer's certificate or signature was refused, or the stream broke.
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    /// The handshake finished without exactly one peer certificate this node accepts.
    #[error("the peer's certificate: {0}")]
    PeerCertificate(&'static str),
}

/// The upgrade: this node's certificate in a rustls client and server configuration.
#[derive(Clone)]
pub struct Config {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("secure::Config").finish_non_exhaustive()
    }
}

impl Config {
    /// The upgrade for `identity`, with a certificate made for it by libp2p-tls (a fresh
    /// certificate key, the identity's signature over it in the libp2p extension). The signature
    /// of `SwarmBuilder::with_tcp`'s security constructors.
    pub fn new(identity: &Keypair) -> Result<Self, SecureError> {
        let (certificate, key) = certificate::generate(identity)?;
        Self::with_certificate(certificate, key)
    }

    /// The upgrade presenting `certificate`, signing with `key` (tests present bad ones).
    fn with_certificate(
        certificate: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, SecureError> {
        let provider = Arc::new(CryptoProvider {
            cipher_suites: CIPHER_SUITES.to_vec(),
            ..rustls::crypto::ring::default_provider()
        });
        let verifier = Arc::new(PeerCertificateVerifier);
        // rustls' own loaders (`with_single_cert`) check the certificate with webpki, which
        // refuses libp2p's critical extension; a resolver hands the pair over as it is.
        let signing_key = provider.key_provider.load_private_key(key)?;
        let presented = Arc::new(PresentedCertificate(Arc::new(CertifiedKey::new(
            vec![certificate],
            signing_key,
        ))));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(presented.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.resumption = rustls::client::Resumption::disabled();

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(presented);
        server.alpn_protocols = vec![ALPN.to_vec()];
        // This end's suite order decides, so a dialler that prefers ChaCha20 still gets AES-GCM.
        server.ignore_client_order = true;
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = SecureError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(SecureError::Handshake)?;
            let stream = TlsStream::from(stream);
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsStream<C>);
    type Error = SecureError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // The specification forbids a server name; rustls sends none for an IP address.
            let name = ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(SecureError::Handshake)?;
            let stream = TlsStream::from(stream);
            let peer = peer_of(stream.get_ref().1)?;
            Ok((peer, stream))
        }
        .boxed()
    }
}

/// The peer id in the one certificate the peer presented (already verified by the handshake;
/// parsed again here, which verifies it again, to read the id).
fn peer_of(state: &CommonState) -> Result<PeerId, SecureError> {
    tracing::debug!(suite = ?state.negotiated_cipher_suite().map(|s| s.suite()), "TLS handshake done");
    let Some([presented]) = state.peer_certificates() else {
        return Err(SecureError::PeerCertificate(
            "not exactly one certificate presented",
        ));
    };
    let parsed = certificate::parse(presented)
        .map_err(|_| SecureError::PeerCertificate("the certificate does not verify"))?;
    Ok(parsed.peer_id())
}

/// This node's certificate and key, presented on every handshake, as client and as server.
#[derive(Debug)]
struct PresentedCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for PresentedCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for PresentedCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Both ends' certificate check (see the module doc): libp2p-tls' parsing and signature
/// verification, no certificate authorities.
#[derive(Debug)]
struct PeerCertificateVerifier;

impl PeerCertificateVerifier {
    /// Accepts a lone certificate that libp2p-tls parses and verifies.
    fn check_presented(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        }
        certificate::parse(end_entity)
            .map(|_| ())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    /// Accepts a TLS 1.3 handshake signature made by the certificate's key.
    fn check_signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let parsed = certificate::parse(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        parsed
            .verify_signature(signed.scheme, message, signed.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }
}

impl ServerCertVerifier for PeerCertificateVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Which peer was meant is the swarm's check, against the dialled address's `/p2p/` id.
        Self::check_presented(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is never offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for PeerCertificateVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check_presented(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is never offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signed: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::check_signature(message, cert, signed)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SIGNATURE_SCHEMES.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
    use libp2p::swarm::{dummy, SwarmEvent};
    use libp2p::{noise, tcp, yamux, Multiaddr, Swarm};
    use rustls::CipherSuite;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    use super::*;

    type Pipe = Compat<tokio::io::DuplexStream>;

    fn pipe() -> (Pipe, Pipe) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (a.compat(), b.compat())
    }

    type Handshake = Result<(PeerId, TlsStream<Pipe>), SecureError>;

    /// Runs a handshake between a dialler presenting `dialler` and a listener presenting
    /// `listener`, both at once on an in-memory stream.
    async fn handshake(dialler: Config, listener: Config) -> (Handshake, Handshake) {
        let (a, b) = pipe();
        futures::join!(
            dialler.upgrade_outbound(a, PROTOCOL),
            listener.upgrade_inbound(b, PROTOCOL),
        )
    }

    /// A client that the listener refused: in TLS 1.3 the client's half of the handshake ends
    /// before the server checks the client's certificate, so the refusal may only arrive as the
    /// server's alert on the first read; either way nothing is ever read.
    async fn assert_refused(dialled: Handshake) {
        if let Ok((_, mut stream)) = dialled {
            let mut buf = [0u8; 16];
            let read = stream.read(&mut buf).await;
            assert!(
                !matches!(read, Ok(n) if n > 0),
                "a refused client read bytes"
            );
        }
    }

    fn suite(stream: &TlsStream<Pipe>) -> Option<CipherSuite> {
        stream
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .map(|s| s.suite())
    }

    #[tokio::test]
    async fn two_nodes_learn_each_others_peer_ids_over_aes_gcm_and_exchange_bytes() {
        let (dialler_key, listener_key) =
            (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialled, accepted) = handshake(
            Config::new(&dialler_key).unwrap(),
            Config::new(&listener_key).unwrap(),
        )
        .await;
        let (listener_seen, mut to_listener) = dialled.unwrap();
        let (dialler_seen, mut to_dialler) = accepted.unwrap();
        assert_eq!(listener_seen, listener_key.public().to_peer_id());
        assert_eq!(dialler_seen, dialler_key.public().to_peer_id());
        assert_eq!(
            suite(&to_listener),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(
            suite(&to_dialler),
            Some(CipherSuite::TLS13_AES_128_GCM_SHA256)
        );

        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (written, read) = futures::join!(
            async {
                to_listener.write_all(&sent).await?;
                to_listener.close().await
            },
            async {
                let mut got = Vec::new();
                to_dialler.read_to_end(&mut got).await.map(|_| got)
            }
        );
        written.unwrap();
        assert_eq!(read.unwrap(), sent);
    }

    #[tokio::test]
    async fn a_dialler_that_prefers_chacha20_still_gets_aes_gcm() {
        // libp2p-tls' own client configuration, which offers ChaCha20-Poly1305 first: the
        // listener's order decides.
        let dialler_key = Keypair::generate_ed25519();
        let listener_key = Keypair::generate_ed25519();
        let (a, b) = pipe();
        let (dialled, accepted) = futures::join!(
            libp2p_tls::Config::new(&dialler_key)
                .unwrap()
                .upgrade_outbound(a, PROTOCOL),
            Config::new(&listener_key)
                .unwrap()
                .upgrade_inbound(b, PROTOCOL),
        );
        let (listener_seen, _) = dialled.unwrap();
        let (dialler_seen, stream) = accepted.unwrap();
        assert_eq!(listener_seen, listener_key.public().to_peer_id());
        assert_eq!(dialler_seen, dialler_key.public().to_peer_id());
        assert_eq!(suite(&stream), Some(CipherSuite::TLS13_AES_128_GCM_SHA256));
    }

    #[tokio::test]
    async fn a_certificate_signed_for_another_key_is_refused_by_either_end() {
        // The certificate of one TLS key presented with another: the handshake signature does not
        // verify against the certificate.
        let identity = Keypair::generate_ed25519();
        let (certificate, _) = certificate::generate(&identity).unwrap();
        let (_, other_key) = certificate::generate(&identity).unwrap();
        let impostor = || Config::with_certificate(certificate.clone(), other_key.clone_key());
        let honest = || Config::new(&Keypair::generate_ed25519()).unwrap();

        let (dialled, accepted) = handshake(honest(), impostor().unwrap()).await;
        assert!(dialled.is_err(), "the dialler accepted a forged server");
        assert!(accepted.is_err());

        let (dialled, accepted) = handshake(impostor().unwrap(), honest()).await;
        assert!(accepted.is_err(), "the listener accepted a forged client");
        assert_refused(dialled).await;
    }

    #[tokio::test]
    async fn a_tampered_certificate_is_refused_by_either_end() {
        let identity = Keypair::generate_ed25519();
        let (certificate, key) = certificate::generate(&identity).unwrap();
        let mut tampered = certificate.to_vec();
        // The last byte is in the certificate's self-signature.
        *tampered.last_mut().unwrap() ^= 0x01;
        let tampered = CertificateDer::from(tampered);
        assert!(certificate::parse(&tampered).is_err());
        let forger = || Config::with_certificate(tampered.clone(), key.clone_key()).unwrap();
        let honest = || Config::new(&Keypair::generate_ed25519()).unwrap();

        let (dialled, accepted) = handshake(honest(), forger()).await;
        assert!(dialled.is_err(), "the dialler accepted a tampered server");
        assert!(accepted.is_err());

        let (dialled, accepted) = handshake(forger(), honest()).await;
        assert!(accepted.is_err(), "the listener accepted a tampered client");
        assert_refused(dialled).await;
    }

    #[tokio::test]
    async fn a_certificate_without_the_libp2p_extension_is_refused() {
        let plain = rcgen::generate_simple_self_signed(vec!["node".into()]).unwrap();
        let certificate = plain.cert.der().clone();
        let key = PrivateKeyDer::try_from(plain.key_pair.serialize_der()).unwrap();
        let stranger = Config::with_certificate(certificate, key).unwrap();
        let (dialled, accepted) =
            handshake(Config::new(&Keypair::generate_ed25519()).unwrap(), stranger).await;
        assert!(
            dialled.is_err(),
            "the dialler accepted a certificate with no peer id"
        );
        assert!(accepted.is_err());
    }

    fn tcp_swarm(identity: Keypair, with_tls: bool) -> Swarm<dummy::Behaviour> {
        let builder = libp2p::SwarmBuilder::with_existing_identity(identity).with_tokio();
        let idle =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(30));
        if with_tls {
            builder
                .with_tcp(
                    tcp::Config::default(),
                    (Config::new, noise::Config::new),
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|_| dummy::Behaviour)
                .unwrap()
                .with_swarm_config(idle)
                .build()
        } else {
            builder
                .with_tcp(
                    tcp::Config::default(),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .unwrap()
                .with_behaviour(|_| dummy::Behaviour)
                .unwrap()
                .with_swarm_config(idle)
                .build()
        }
    }

    /// Dials `listener` from `dialler` over TCP on loopback and returns the peer each end saw
    /// connect.
    async fn connect(
        mut dialler: Swarm<dummy::Behaviour>,
        mut listener: Swarm<dummy::Behaviour>,
    ) -> (PeerId, PeerId) {
        listener
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let address: Multiaddr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
                break address;
            }
        };
        dialler.dial(address).unwrap();
        let (mut dialler_saw, mut listener_saw) = (None, None);
        while dialler_saw.is_none() || listener_saw.is_none() {
            tokio::select! {
                event = dialler.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => dialler_saw = Some(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                    _ => {}
                },
                event = listener.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => listener_saw = Some(peer_id),
                    SwarmEvent::IncomingConnectionError { error, .. } => panic!("accept failed: {error}"),
                    _ => {}
                },
            }
        }
        (dialler_saw.unwrap(), listener_saw.unwrap())
    }

    #[tokio::test]
    async fn a_node_that_offers_only_noise_still_connects_either_way() {
        for new_node_dials in [true, false] {
            let (new_key, old_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
            let (new_id, old_id) = (new_key.public().to_peer_id(), old_key.public().to_peer_id());
            let new = tcp_swarm(new_key, true);
            let old = tcp_swarm(old_key, false);
            if new_node_dials {
                assert_eq!(connect(new, old).await, (old_id, new_id));
            } else {
                assert_eq!(connect(old, new).await, (new_id, old_id));
            }
        }
    }

    #[tokio::test]
    async fn two_nodes_of_this_release_connect_over_tcp() {
        let (a_key, b_key) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (a_id, b_id) = (a_key.public().to_peer_id(), b_key.public().to_peer_id());
        let a = tcp_swarm(a_key, true);
        let b = tcp_swarm(b_key, true);
        assert_eq!(connect(a, b).await, (b_id, a_id));
    }
}
