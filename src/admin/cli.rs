//! `proxyseg admin ...`: the command-line client of the admin API.
