//! The keys in force: read by every handshake, replaced whole when SIGHUP reloads the file.

use std::sync::{Arc, RwLock};

use rexec_shared::keyfile::AgentKeys;

/// The keys clients may authenticate with; replaced whole on reload.
#[derive(Debug)]
pub struct KeyStore(RwLock<Arc<AgentKeys>>);

impl KeyStore {
    /// A store holding `ring`.
    pub fn new(ring: AgentKeys) -> Self {
        Self(RwLock::new(Arc::new(ring)))
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<AgentKeys> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `ring` in force for handshakes that start from now on.
    pub fn replace(&self, ring: AgentKeys) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }
}
