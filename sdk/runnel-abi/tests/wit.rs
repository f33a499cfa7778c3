//! `schemas/wit` parses as a WIT package, and its worlds export and import what the host
//! and the guest SDK are built for.

use std::path::Path;

use wit_parser::{Resolve, WorldItem, WorldKey};

fn names(resolve: &Resolve, items: &wit_parser::IndexMap<WorldKey, WorldItem>) -> Vec<String> {
    items
        .keys()
        .map(|key| resolve.name_world_key(key))
        .collect()
}

#[test]
fn the_functions_package_has_its_worlds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/wit");
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_path(&dir).expect("schemas/wit parses");
    assert_eq!(
        resolve.packages[package].name.to_string(),
        "runnel:functions@0.1.0"
    );
    for (world, export, imports) in [
        (
            "transform",
            "process",
            vec!["log", "config", "kv", "metrics"],
        ),
        (
            "consumer",
            "process",
            vec!["log", "config", "kv", "produce", "metrics"],
        ),
        ("sink", "process", vec!["log", "config", "kv", "metrics"]),
        ("source", "poll", vec!["log", "config", "kv", "metrics"]),
    ] {
        let id = resolve
            .select_world(&[package], Some(world))
            .unwrap_or_else(|e| panic!("world {world}: {e}"));
        let world = &resolve.worlds[id];
        assert_eq!(names(&resolve, &world.exports), vec![export]);
        let imported = names(&resolve, &world.imports);
        for wanted in imports {
            let full = format!("runnel:functions/{wanted}@0.1.0");
            assert!(
                imported.contains(&full),
                "{} lacks {full}: {imported:?}",
                world.name
            );
        }
    }
}
