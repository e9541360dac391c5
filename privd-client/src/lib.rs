//! Client for the privd socket. (work in progress)
