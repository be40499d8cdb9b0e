//! The synthetic world: seeded and deterministic, counterfactuals that change
//! only what the factor causes, the training split's tie at its configured
//! strength, exactly balanced test groups, captions that name every factor, and
//! config errors as values.

use foil::world::{Split, World, WorldConfig, FACTORS};

const SHAPE: usize = 0;
const COLOUR: usize = 1;
const BACKGROUND: usize = 2;

fn changed_fraction(a: &[f32], b: &[f32]) -> f64 {
    let px = a.len() / 3;
    let changed = (0..px).filter(|&i| (0..3).any(|c| (a[c * px + i] - b[c * px + i]).abs() > 1e-6)).count();
    changed as f64 / px as f64
}

#[test]
fn the_same_seed_gives_the_same_scenes_and_images() {
    let world = World::new(WorldConfig::default());
    let (a, b) = (world.sample(Split::Train, 20, 7), world.sample(Split::Train, 20, 7));
    assert_eq!(a, b);
    assert_eq!(world.render(&a[3]), world.render(&b[3]));
    assert_ne!(a, world.sample(Split::Test, 20, 7), "splits draw from their own streams");
    let image = world.render(&a[0]);
    assert_eq!(image.len(), 3 * 32 * 32);
    assert!(image.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn counterfactuals_change_what_the_factor_causes() {
    let world = World::new(WorldConfig::default());
    for scene in world.sample(Split::Test, 30, 3) {
        let image = world.render(&scene);
        let colour = (scene.values[COLOUR] + 1) % world.values(COLOUR).len();
        let recoloured = world.render(&scene.with(COLOUR, colour));
        let object = changed_fraction(&image, &recoloured);
        assert!(object > 0.01 && object < 0.4, "a colour change touches the object only: {object:.3}");
        let shape = (scene.values[SHAPE] + 1) % world.values(SHAPE).len();
        let reshaped = changed_fraction(&image, &world.render(&scene.with(SHAPE, shape)));
        assert!(reshaped > 0.0 && reshaped < 0.4, "a shape change touches the object only: {reshaped:.3}");
        let bg = (scene.values[BACKGROUND] + 1) % world.values(BACKGROUND).len();
        let moved = changed_fraction(&image, &world.render(&scene.with(BACKGROUND, bg)));
        assert!(moved > 0.5, "a background change repaints the background: {moved:.3}");
    }
}

#[test]
fn the_training_split_is_tied_and_the_test_split_balanced() {
    let world = World::new(WorldConfig::default());
    let train = world.sample(Split::Train, 4000, 1);
    let tied = train.iter().filter(|s| s.values[BACKGROUND] == s.values[SHAPE] % 4).count();
    let rate = tied as f64 / train.len() as f64;
    assert!((rate - 0.95).abs() < 0.015, "tie rate {rate}");
    let test = world.sample(Split::Test, 32 * 5, 1);
    let mut groups = [[0usize; 4]; 4];
    for s in &test {
        groups[s.values[SHAPE]][s.values[BACKGROUND]] += 1;
    }
    assert!(groups.iter().flatten().all(|&g| g == 10), "{groups:?}");
}

#[test]
fn captions_name_every_factor() {
    let world = World::new(WorldConfig::default());
    let config = world.config();
    let mut templates = std::collections::BTreeSet::new();
    for scene in world.sample(Split::Test, 60, 5) {
        let caption = world.caption(&scene);
        for (f, name) in FACTORS.iter().enumerate() {
            let words = &config.words[f][scene.values[f]];
            assert!(words.iter().any(|w| caption.contains(w.as_str())), "'{caption}' lacks {name}");
        }
        assert!(!caption.contains(" a orange") && !caption.contains(" an red"), "{caption}");
        templates.insert(caption.split(' ').take(2).collect::<Vec<_>>().join(" "));
    }
    assert!(templates.len() >= 3, "the wording varies: {templates:?}");
}

#[test]
fn configs_choose_values_and_bad_ones_are_errors() {
    let c = WorldConfig::from_json(
        r#"{"size": 48, "label": "colour", "tie": {"factor": "shape", "strength": 0.8},
            "factors": {"colour": ["red", "blue"], "shape": ["star", "circle"]},
            "words": {"red": ["crimson"]}}"#,
    )
    .unwrap();
    assert_eq!((c.size, c.label, c.tie), (48, COLOUR, Some((SHAPE, 0.8))));
    assert_eq!(c.values[SHAPE], ["star", "circle"]);
    assert_eq!(c.words[COLOUR][0], ["crimson"]);
    let world = World::new(c);
    assert_eq!(world.render(&world.sample(Split::Train, 1, 0)[0]).len(), 3 * 48 * 48);
    for (json, wanted) in [
        (r#"{"factors": {"texture": ["x"]}}"#, "unknown factor 'texture'"),
        (r#"{"factors": {"shape": ["circle", "hexagon"]}}"#, "'hexagon' is not a shape"),
        (r#"{"tie": {"factor": "shape", "strength": 0.9}}"#, "cannot be the label"),
        (r#"{"tie": {"factor": "background", "strength": 1.5}}"#, "outside [0, 1]"),
        (r#"{"words": {"waterr": ["x"]}}"#, "no factor's value"),
        (r#"{"sizes": 32}"#, "unknown field"),
    ] {
        let e = WorldConfig::from_json(json).unwrap_err().to_string();
        assert!(e.contains(wanted), "{json}: {e}");
    }
}

#[test]
fn world_render_writes_class_folders_and_metadata() {
    let out = std::env::temp_dir().join(format!("foil-world-render-{}", std::process::id()));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_foil"))
        .args(["world", "render", "--split", "test", "--n", "12", "--seed", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let csv = std::fs::read_to_string(out.join("metadata.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "file,caption,label,shape,colour,background,size,position");
    assert_eq!(rows.len(), 13);
    let world = World::new(WorldConfig::default());
    let scenes = world.sample(Split::Test, 12, 2);
    for (row, scene) in rows[1..].iter().zip(&scenes) {
        let file = row.split(',').next().unwrap();
        let label = &world.values(SHAPE)[scene.values[SHAPE]];
        assert!(file.starts_with(&format!("{label}/")), "{row}");
        assert!(row.contains(&format!("\"{}\"", world.caption(scene))), "{row}");
        let png = foil::tensor::image::read_png(out.join(file), &foil::Device::Cpu).unwrap().to_vec_f32().unwrap();
        let want = world.render(scene);
        let worst = png.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 0.5 / 255.0 + 1e-6, "{file}: PNG differs from the render by {worst}");
    }
}
