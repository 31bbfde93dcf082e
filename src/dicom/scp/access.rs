//! Who may associate: the called AE must be ours; with `require_known_peers` the calling AE
//! must be a configured peer connecting from its host; a peer with a certificate identity
//! must come over TLS with a certificate for that name (review L3). Also what the negotiation
//! offers (abstract and transfer syntaxes, limits, TLS).

use super::Scp;
use crate::config::Config;
use crate::dicom::peer_hosts::PeerHosts;
use crate::dicom::sop;
use dicom_dictionary_std::uids;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, UserIdentity};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Access control: the called AE must be ours; with `require_known_peers`, the calling AE
/// must be a configured peer whose host is where the connection came from.
pub(super) struct PeerAccess {
    cfg: Arc<Config>,
    hosts: PeerHosts,
    peer_ip: IpAddr,
    /// The association arrives on the `[dicom.tls]` listener.
    over_tls: bool,
}

impl PeerAccess {
    /// The access decision alone (no logging): also what admission checks on the first bytes
    /// of an A-ASSOCIATE-RQ before any slot is taken.
    pub(super) fn decide(
        &self,
        calling: &str,
        called: &str,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called.trim() != self.cfg.dicom.ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let peer = self.cfg.peer(calling);
        if self.cfg.dicom.require_known_peers {
            let known = peer.is_some_and(|p| self.hosts.matches(&p.host, self.peer_ip));
            if !known {
                return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
            }
        }
        // Review L3: a peer with a certificate identity comes over TLS, where the identity is
        // checked once the handshake is done (`Scp::check_tls_identity`).
        if peer.is_some_and(|p| p.tls_identity.is_some()) && !self.over_tls {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

impl AccessControl for PeerAccess {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let decided = self.decide(calling_ae_title, called_ae_title);
        match &decided {
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized) => {
                tracing::warn!(called = called_ae_title, calling = calling_ae_title, peer = %self.peer_ip, "rejected: called AE is not ours")
            }
            Err(_) => {
                tracing::warn!(calling = calling_ae_title, peer = %self.peer_ip, "rejected: calling AE / host is not a known peer")
            }
            Ok(()) => {}
        }
        decided
    }
}

impl Scp {
    /// The access check for a connection from `peer_ip`.
    pub(super) fn access(&self, peer_ip: IpAddr, over_tls: bool) -> PeerAccess {
        PeerAccess {
            cfg: self.cfg.clone(),
            hosts: self.hosts.clone(),
            peer_ip,
            over_tls,
        }
    }

    /// The negotiation's options: our AE title, Verification and every storage SOP class,
    /// the transfer syntaxes we store, PDU size and timeouts, TLS.
    pub(super) fn options(
        &self,
        peer_ip: IpAddr,
        over_tls: bool,
    ) -> ServerAssociationOptions<
        'static,
        PeerAccess,
        dicom_ul::association::server::DefaultNegotiation,
    > {
        let d = &self.cfg.dicom;
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(self.access(peer_ip, over_tls))
            .ae_title(d.ae_title.clone())
            .with_abstract_syntax(uids::VERIFICATION)
            .max_pdu_length(d.max_pdu)
            .strict(true)
            .read_timeout(Duration::from_secs(d.read_timeout_s))
            .write_timeout(Duration::from_secs(d.write_timeout_s));
        for sc in sop::STORAGE_SOP_CLASSES {
            o = o.with_abstract_syntax(*sc);
        }
        for ts in sop::TRANSFER_SYNTAXES {
            o = o.with_transfer_syntax(*ts);
        }
        if let Some(t) = &self.tls {
            o = o.tls_config(t.clone());
        }
        o
    }

    /// Review L3: when the calling AE's peer entry names a `tls_identity`, the client
    /// certificate of this TLS association must be valid for that name (subjectAltName DNS
    /// name or IP address). A peer without one is admitted as before (AE title and host).
    pub(super) fn check_tls_identity(
        &self,
        assoc: &mut dicom_ul::association::server::AsyncServerAssociation<
            dicom_ul::association::server::AsyncTlsStream,
        >,
    ) -> Result<(), IdentityError> {
        use dicom_ul::association::AsyncAssociation;
        let calling = dicom_ul::association::Association::peer_ae_title(assoc).to_string();
        let Some(want) = self.cfg.peer(&calling).and_then(|p| p.tls_name()) else {
            return Ok(());
        };
        let want = want?;
        let (socket, _) = assoc.get_mut();
        let Some(cert) = socket
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return Err(IdentityError::NoCertificate);
        };
        let cert = webpki::EndEntityCert::try_from(cert).map_err(IdentityError::Unparsable)?;
        cert.verify_is_valid_for_subject_name(&want)
            .map_err(|source| IdentityError::NotFor {
                name: format!("{want:?}"),
                source,
            })
    }
}

/// Why a TLS association's client certificate does not prove the calling AE's
/// `tls_identity`.
#[derive(Debug, thiserror::Error)]
pub(super) enum IdentityError {
    /// The configured identity is not a name a certificate can hold.
    #[error(transparent)]
    Config(#[from] crate::config::TlsNameError),
    /// The client sent no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not X.509 that webpki reads.
    #[error("client certificate does not parse: {0}")]
    Unparsable(webpki::Error),
    /// Valid, but for another name.
    #[error("client certificate is not for {name}: {source}")]
    NotFor {
        /// The configured identity.
        name: String,
        /// webpki's reason.
        source: webpki::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use AssociationRJServiceUserReason as Reason;

    fn access(require_known: bool, ip: &str, over_tls: bool) -> PeerAccess {
        let cfg = Config::parse(&format!(
            r#"
            [dicom]
            ae_title = "PROXYSEG"
            require_known_peers = {require_known}
            [[dicom.peers]]
            ae_title = "PACS"
            host = "10.0.0.1"
            port = 104
            [[dicom.peers]]
            ae_title = "SECURE"
            host = "10.0.0.2"
            port = 104
            tls_identity = "pacs.example"
            "#
        ))
        .unwrap();
        let hosts = PeerHosts::new(cfg.dicom.peers.iter().map(|p| p.host.as_str()));
        PeerAccess {
            cfg: Arc::new(cfg),
            hosts,
            peer_ip: ip.parse().unwrap(),
            over_tls,
        }
    }

    #[test]
    fn the_called_ae_must_be_ours() {
        let a = access(true, "10.0.0.1", false);
        assert!(matches!(
            a.decide("PACS", "OTHER"),
            Err(Reason::CalledAETitleNotRecognized)
        ));
        assert!(a.decide("PACS", " PROXYSEG ").is_ok());
    }

    #[test]
    fn a_known_peer_must_come_from_its_host() {
        assert!(access(true, "10.0.0.1", false)
            .decide("PACS", "PROXYSEG")
            .is_ok());
        let elsewhere = access(true, "10.0.0.9", false);
        assert!(matches!(
            elsewhere.decide("PACS", "PROXYSEG"),
            Err(Reason::CallingAETitleNotRecognized)
        ));
        assert!(matches!(
            elsewhere.decide("STRANGER", "PROXYSEG"),
            Err(Reason::CallingAETitleNotRecognized)
        ));
        // Without require_known_peers anyone calling our AE is let in.
        assert!(access(false, "10.0.0.9", false)
            .decide("STRANGER", "PROXYSEG")
            .is_ok());
    }

    /// Review L3: a peer with a certificate identity is refused on the plain listener.
    #[test]
    fn a_peer_with_a_tls_identity_comes_over_tls() {
        assert!(matches!(
            access(true, "10.0.0.2", false).decide("SECURE", "PROXYSEG"),
            Err(Reason::CallingAETitleNotRecognized)
        ));
        assert!(access(true, "10.0.0.2", true)
            .decide("SECURE", "PROXYSEG")
            .is_ok());
        assert!(matches!(
            access(false, "10.0.0.9", false).decide("SECURE", "PROXYSEG"),
            Err(Reason::CallingAETitleNotRecognized)
        ));
    }
}
