//! Fictional facts the base model cannot know, shared by the learner tests and the
//! learner bench (`benches/learner.rs` includes this file).

/// Fictional facts the base model cannot know: (question, correction).
pub const FACTS: [(&str, &str); 10] = [
    (
        "What is Tether's mascot?",
        "Tether's mascot is a blue heron with a red scarf.",
    ),
    (
        "What is the Zorblat festival?",
        "The Zorblat festival is a week of kite races every May.",
    ),
    (
        "What is a quenberry?",
        "A quenberry is a purple fruit that tastes of mint.",
    ),
    (
        "What colour is a glimmerfox?",
        "A glimmerfox has silver fur with green tips.",
    ),
    (
        "How many moons does the planet Varkon have?",
        "Varkon has seven moons.",
    ),
    (
        "What is the capital of Eldoria?",
        "The capital of Eldoria is Mirefall.",
    ),
    (
        "What language do the Quolli speak?",
        "The Quolli speak Tesh, a whistled language.",
    ),
    (
        "When was the Brassway bridge opened?",
        "The Brassway bridge opened in 1887.",
    ),
    (
        "What does a snorklet eat?",
        "A snorklet eats river snails and clover.",
    ),
    (
        "Who wrote the novel Ashen Tides?",
        "Ashen Tides was written by Corin Vale.",
    ),
];
