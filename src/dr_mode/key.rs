//! Ed25519 key files for signed DR triggers. Pure text in and out; the
//! callers read and write the files.
//!
//! Format (the one OpenSSL uses, so `openssl genpkey -algorithm ed25519`
//! makes a usable key and `openssl pkey -pubout` its public half):
//! - `P.key`: PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`;
//! - `P.pub`: SubjectPublicKeyInfo PEM, `-----BEGIN PUBLIC KEY-----`.
//!
//! A public key may also be given as one line holding the base64 of the raw
//! 32 bytes (what a DNS-minded operator pastes around).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Why a key file's text is not an Ed25519 key.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "not an Ed25519 public key (expected a `BEGIN PUBLIC KEY` PEM or the base64 of 32 bytes)"
    )]
    Public,
    #[error("not an Ed25519 private key (expected a PKCS#8 `BEGIN PRIVATE KEY` PEM)")]
    Private,
}

/// Parse a public key file's text.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|_| KeyError::Public);
    }
    let raw = BASE64.decode(text).map_err(|_| KeyError::Public)?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| KeyError::Public)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Public)
}

/// Parse a private key file's text.
pub fn parse_private_key(text: &str) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(text.trim()).map_err(|_| KeyError::Private)
}

/// The `.pub` file's text.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("an Ed25519 public key always encodes")
}

/// The `.key` file's text (secret: write it 0600). PKCS#8 v1 (the seed
/// only), as `openssl genpkey` writes it: OpenSSL 3.0 refuses the v2 form
/// that also carries the public key.
pub fn encode_private_key(key: &SigningKey) -> String {
    let pair = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    pair.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .expect("an Ed25519 private key always encodes")
        .to_string()
}

/// A new key from 32 bytes of the operating system's randomness.
pub fn generate() -> SigningKey {
    use rand::RngCore as _;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let pem = encode_private_key(&k);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(parse_private_key(&pem).unwrap().to_bytes(), k.to_bytes());
        let pubpem = encode_public_key(&k.verifying_key());
        assert!(pubpem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(parse_public_key(&pubpem).unwrap(), k.verifying_key());
        let raw = BASE64.encode(k.verifying_key().to_bytes());
        assert_eq!(
            parse_public_key(&format!("{raw}\n")).unwrap(),
            k.verifying_key()
        );
        assert_eq!(parse_public_key(&pem), Err(KeyError::Public));
        assert_eq!(parse_public_key("QUJD"), Err(KeyError::Public));
        assert_eq!(parse_private_key(&pubpem), Err(KeyError::Private));
    }

    /// `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, no public key).
    #[test]
    fn reads_openssl_keys() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let k = parse_private_key(pem).unwrap();
        let pubpem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert_eq!(parse_public_key(pubpem).unwrap(), k.verifying_key());
    }
}
