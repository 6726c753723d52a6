//! Harness for tests against real servers: `redis-server` processes on free loopback
//! ports in temp dirs (killed on drop), the ferry processes started as a user would
//! start them, a status poller, and a type-aware comparison of two servers.
//!
//! Layout: [`servers`] (one `redis-server`), [`sentinel`] and [`cluster`] (topologies),
//! [`ferry`] (ferry's processes and their endpoints), [`data`] (filling and comparing
//! servers), [`witnesses`] (counted write load), [`proxy`] (a TCP proxy that cuts and
//! stalls links), [`module`] (a small Redis module), [`rng`] (seeded randomness), [`wait`]
//! (polling a condition until it holds, instead of sleeping for a guessed time), [`scenarios`]
//! (scenarios run against several server builds).

pub mod cluster;
pub mod data;
pub mod ferry;
pub mod module;
pub mod proxy;
pub mod rng;
pub mod scenarios;
pub mod sentinel;
pub mod servers;
pub mod wait;
pub mod witnesses;

pub use cluster::*;
pub use data::*;
pub use ferry::*;
pub use rng::*;
pub use scenarios::*;
pub use sentinel::*;
pub use servers::*;
pub use wait::*;
pub use witnesses::*;
