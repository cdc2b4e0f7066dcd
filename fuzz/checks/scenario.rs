//! Simulator scenario files (`shoal_simulations::scenario::Scenario::parse`). A scenario that
//! parses is valid and builds its topology.

use shoal_simulations::scenario::Scenario;
use shoal_simulations::topology::Topology;

/// The input is the scenario's TOML text.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(scenario) = Scenario::parse(text) else {
        return;
    };
    scenario.validate().expect("a parsed scenario is valid");
    let topology = Topology::build(&scenario.topology, None, None);
    assert!(topology.regions() >= 1);
}
