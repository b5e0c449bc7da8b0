//! CNI for crid: finds network configuration lists and plugins, runs ADD/CHECK/DEL/STATUS/GC as
//! the CNI spec defines, caches results for DEL after a restart, and creates the network
//! namespaces pods live in. It decides nothing about pods; `sandbox` calls it.
