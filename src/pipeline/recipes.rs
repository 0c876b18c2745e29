//! llama.cpp's quantization recipes (`llama-quantize MODEL OUT Q4_K_M`): a file type names a base
//! ggml type, and a fixed rule per tensor moves some tensors to other types — the output head
//! and tied embeddings to q6_K, some layers' attn_v and ffn_down to more bits, and so on.
//!
//! The rules are those of `llama_tensor_get_type_impl` in src/llama-quant.cpp of the llama.cpp
//! that llama-cpp-python 0.3.36 vendors, read as facts and written anew here:
//!
//! - Tensors are visited in llama.cpp's order: by layer (`blk.N.`; tensors outside a layer
//!   first), then by name. Counters follow that order: every attn_v-like tensor (attn_v,
//!   attn_qkv, attn_kv_b) reached by the rules counts one, and so does every ffn_down, ffn_gate
//!   and ffn_up; the count of attn_v-like names over the whole file and the model's layer count
//!   are what the layer rules divide.
//! - `use_more_bits(i, n)`: the first eighth of the layers, the last eighth, and every third
//!   layer in between (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`).
//! - The output head, and the token embeddings when the file has no `output.weight` (tied
//!   embeddings), take q6_K (q5_K under IQ3_XXS), or q8_0 for Falcon or when their rows are not
//!   whole blocks of the base type (unless the base is q8_0).
//! - attn_v, ffn_down, attn_output and attn_k rules by file type, grouped-query ratio
//!   (`n_head / n_head_kv` ≥ 4), expert count (8), Falcon, and llama.cpp's "70B" model type
//!   (Llama with 80 layers and grouped-query attention, Qwen2 / Deci / OLMo with 80, Jais2
//!   with 68 layers). attn_qkv is attn_v-like, so it takes attn_v's rules (llama.cpp's own
//!   attn_qkv arm comes after attn_v's and is never reached).
//! - Whether an importance matrix is given: IQ4_NL / IQ4_XS give the first eighth of ffn_down
//!   q5_K only without one, Q4_0 / Q5_0 give it q4_1 / q5_1 only with one, IQ3_XXS's attn_v
//!   and ffn_down depend on it. llama.cpp refuses Q2_K_S and (for whole blocks) IQ3_XXS and
//!   IQ3_XS without an importance matrix; these rules do not.
//!
//! Which tensors are quantized at all is [`kept_by_llama_cpp`]'s answer. The row-width fallback
//! (a row that is not whole blocks of the chosen type: q4_K → q5_0, …, else F16) is NOT applied
//! here: it is the caller's, with `QuantSpec::for_gguf_row` as the GGUF writer applies it.
//! tests/recipes.rs checks every assignment against the types llama.cpp itself writes
//! (benches/llama_cpp/record_recipes.py).

use std::fmt;

use arrowquant_udfs::kernels::scheme::Scheme;

use super::gguf_select::kept_by_llama_cpp;
use crate::model::gguf_file::GgmlType;

/// A llama.cpp file type (`llama_ftype`) that ArrowQuant reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Recipe {
    Q2K,
    Q2KS,
    Q3KS,
    Q3KM,
    Q3KL,
    Q4KS,
    Q4KM,
    Q5KS,
    Q5KM,
    Q6K,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Iq4Xs,
    Iq4Nl,
    Iq3Xxs,
    Iq3Xs,
    Iq3S,
    Iq3M,
}

/// A recipe's name as llama-quantize spells it, its base ggml type.
const TABLE: [(Recipe, &str, &str); 21] = [
    (Recipe::Q2K, "Q2_K", "Q2_K"),
    (Recipe::Q2KS, "Q2_K_S", "Q2_K"),
    (Recipe::Q3KS, "Q3_K_S", "Q3_K"),
    (Recipe::Q3KM, "Q3_K_M", "Q3_K"),
    (Recipe::Q3KL, "Q3_K_L", "Q3_K"),
    (Recipe::Q4KS, "Q4_K_S", "Q4_K"),
    (Recipe::Q4KM, "Q4_K_M", "Q4_K"),
    (Recipe::Q5KS, "Q5_K_S", "Q5_K"),
    (Recipe::Q5KM, "Q5_K_M", "Q5_K"),
    (Recipe::Q6K, "Q6_K", "Q6_K"),
    (Recipe::Q8_0, "Q8_0", "Q8_0"),
    (Recipe::Q4_0, "Q4_0", "Q4_0"),
    (Recipe::Q4_1, "Q4_1", "Q4_1"),
    (Recipe::Q5_0, "Q5_0", "Q5_0"),
    (Recipe::Q5_1, "Q5_1", "Q5_1"),
    (Recipe::Iq4Xs, "IQ4_XS", "IQ4_XS"),
    (Recipe::Iq4Nl, "IQ4_NL", "IQ4_NL"),
    (Recipe::Iq3Xxs, "IQ3_XXS", "IQ3_XXS"),
    (Recipe::Iq3Xs, "IQ3_XS", "IQ3_S"),
    (Recipe::Iq3S, "IQ3_S", "IQ3_S"),
    (Recipe::Iq3M, "IQ3_M", "IQ3_S"),
];

impl Recipe {
    /// Every recipe, in [`Recipe::NAMES`]' order.
    pub const ALL: [Recipe; 21] = {
        let mut all = [Recipe::Q2K; 21];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    /// Every recipe's name, as llama-quantize spells it.
    pub const NAMES: [&'static str; 21] = {
        let mut names = [""; 21];
        let mut i = 0;
        while i < TABLE.len() {
            names[i] = TABLE[i].1;
            i += 1;
        }
        names
    };

    /// A recipe by name, case-insensitive (`q4_k_m`, `Q4_K_M`).
    pub fn parse(text: &str) -> Result<Recipe, String> {
        TABLE
            .iter()
            .find(|(_, name, _)| name.eq_ignore_ascii_case(text.trim()))
            .map(|(recipe, _, _)| *recipe)
            .ok_or_else(|| {
                format!(
                    "unknown recipe '{text}': known recipes are {}",
                    Recipe::NAMES.join(", ")
                )
            })
    }

    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// The ggml type every quantized tensor starts from (Q4_K for Q4_K_M, IQ3_S for IQ3_M).
    pub fn base_type(self) -> GgmlType {
        ggml(self.entry().2)
    }

    /// llama.cpp's `llama_ftype` of a file made by this recipe (`general.file_type`), as
    /// llama.h numbers them (LLAMA_FTYPE_MOSTLY_Q4_K_M = 15, …).
    pub fn llama_ftype(self) -> u32 {
        match self {
            Recipe::Q4_0 => 2,
            Recipe::Q4_1 => 3,
            Recipe::Q8_0 => 7,
            Recipe::Q5_0 => 8,
            Recipe::Q5_1 => 9,
            Recipe::Q2K => 10,
            Recipe::Q3KS => 11,
            Recipe::Q3KM => 12,
            Recipe::Q3KL => 13,
            Recipe::Q4KS => 14,
            Recipe::Q4KM => 15,
            Recipe::Q5KS => 16,
            Recipe::Q5KM => 17,
            Recipe::Q6K => 18,
            Recipe::Q2KS => 21,
            Recipe::Iq3Xs => 22,
            Recipe::Iq3Xxs => 23,
            Recipe::Iq4Nl => 25,
            Recipe::Iq3S => 26,
            Recipe::Iq3M => 27,
            Recipe::Iq4Xs => 30,
        }
    }

    fn entry(self) -> &'static (Recipe, &'static str, &'static str) {
        TABLE
            .iter()
            .find(|(recipe, _, _)| *recipe == self)
            .expect("every recipe is in the table")
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hyper-parameters the rules read (from the GGUF metadata `{arch}.block_count`,
/// `{arch}.attention.head_count`, `….head_count_kv`, `{arch}.expert_count`), each `None` when
/// the file has no such key. Per-layer arrays give their first layer's value, as llama.cpp reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelParams {
    /// Layers; `None`: one more than the highest `blk.N.` of the tensor names.
    pub n_layer: Option<u32>,
    pub n_head: Option<u32>,
    /// Key/value heads; `None`: as many as query heads (no grouped-query attention).
    pub n_head_kv: Option<u32>,
    pub n_expert: Option<u32>,
}

impl ModelParams {
    /// llama.cpp's `n_gqa()`: query heads per key/value head, 0 without key/value heads.
    fn gqa(&self) -> u32 {
        let n_head = self.n_head.unwrap_or(0);
        match self.n_head_kv.unwrap_or(n_head) {
            0 => 0,
            kv => n_head / kv,
        }
    }

    fn experts(&self) -> u32 {
        self.n_expert.unwrap_or(0)
    }
}

/// The ggml type the recipe's rules give one tensor, before the row-width fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleType {
    /// Index of the tensor in the list given.
    pub index: usize,
    pub name: String,
    pub ggml: GgmlType,
    /// Why, when the type is not the recipe's base type.
    pub reason: Option<String>,
}

/// One quantized tensor's scheme under a recipe, before the row-width fallback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Index of the tensor in the list given.
    pub index: usize,
    pub name: String,
    pub scheme: Scheme,
    /// Why, when the scheme is not the recipe's base type
    /// (`Q4_K_M: attn_v of layer 3 of 32 (use_more_bits): q6_K`).
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error(
        "recipe {recipe}: {tensor} takes ggml type {ggml}, which ArrowQuant cannot write \
         (its GGUF schemes: q4_0, q4_1, q5_0, q5_1, q8_0, q2_K … q6_K, iq4_nl, iq4_xs)"
    )]
    NoScheme {
        recipe: Recipe,
        tensor: String,
        ggml: &'static str,
    },
    #[error("recipe {recipe}: {tensor}: a model with experts needs the layer in the name (blk.N.)")]
    NoLayer { recipe: Recipe, tensor: String },
    #[error("recipe {recipe}: {tensor}: layer {layer} is outside the model's {n_layer} layers")]
    BadLayer {
        recipe: Recipe,
        tensor: String,
        layer: i64,
        n_layer: i64,
    },
}

/// Each tensor's scheme under `recipe`, for the tensors llama.cpp quantizes
/// ([`kept_by_llama_cpp`] is `None`), in the order given; see [`llama_cpp_types`] for the
/// arguments. The row-width fallback is the caller's (`QuantSpec::for_gguf_row` on the
/// innermost dimension). Refused with [`RecipeError::NoScheme`] when a rule names a ggml type
/// that has no [`Scheme`] (IQ3_S for IQ3_M, IQ3_XXS, IQ2_S).
pub fn assign(
    recipe: Recipe,
    arch: &str,
    params: &ModelParams,
    imatrix: bool,
    tensors: &[(&str, &[u64])],
) -> Result<Vec<Assignment>, RecipeError> {
    llama_cpp_types(recipe, arch, params, imatrix, tensors)?
        .into_iter()
        .map(|t| {
            let scheme =
                Scheme::from_ggml_type(t.ggml.id).ok_or_else(|| RecipeError::NoScheme {
                    recipe,
                    tensor: t.name.clone(),
                    ggml: t.ggml.name,
                })?;
            Ok(Assignment {
                index: t.index,
                name: t.name,
                scheme,
                reason: t.reason,
            })
        })
        .collect()
}

/// The ggml type llama.cpp's rules give each quantized tensor under `recipe`, before the
/// row-width fallback, in the order given. `arch` is the GGUF `general.architecture`
/// (`llama`, `bert`, `falcon`, …); `tensors` are every tensor of the output file, as (GGUF
/// name, ggml dims innermost first): the counters count over all of them. `imatrix`: whether
/// an importance matrix is used (some rules depend on it).
pub fn llama_cpp_types(
    recipe: Recipe,
    arch: &str,
    params: &ModelParams,
    imatrix: bool,
    tensors: &[(&str, &[u64])],
) -> Result<Vec<RuleType>, RecipeError> {
    let categories: Vec<Category> = tensors.iter().map(|(n, _)| category(n)).collect();
    let n_layer = params.n_layer.map_or_else(
        || {
            tensors
                .iter()
                .filter_map(|(n, _)| layer_of(n))
                .max()
                .map_or(0, |l| l.max(-1) + 1)
        },
        i64::from,
    );
    let mut state = State {
        recipe,
        arch,
        params,
        imatrix,
        n_layer,
        n_attn_v: categories.iter().filter(|c| c.is_attn_v()).count() as i64,
        tied: !categories.contains(&Category::Output),
        i_attn_v: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    // llama.cpp's order: by layer (none first), then by name.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (layer_of(tensors[i].0).unwrap_or(-1), tensors[i].0);
        key(a).cmp(&key(b))
    });
    let base = recipe.base_type();
    let mut out = Vec::new();
    for i in order {
        let (name, dims) = tensors[i];
        if kept_by_llama_cpp(name, dims).is_some() {
            continue;
        }
        let (ggml, why) = state.rule(name, dims, categories[i], base)?;
        let reason = (ggml != base).then(|| {
            let what = why.unwrap_or_else(|| "a rule".into());
            format!("{recipe}: {what}: {}", type_name(ggml))
        });
        out.push(RuleType {
            index: i,
            name: name.to_string(),
            ggml,
            reason,
        });
    }
    out.sort_by_key(|t| t.index);
    Ok(out)
}

/// llama.cpp's broad tensor kinds (`tensor_get_category`), by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttnV | Category::AttnQkv | Category::AttnKvB
        )
    }
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    const PARTS: [(&str, Category); 9] = [
        ("attn_qkv.weight", Category::AttnQkv),
        ("attn_kv_b.weight", Category::AttnKvB),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    PARTS
        .iter()
        .find(|(part, _)| name.contains(part))
        .map_or(Category::Other, |(_, c)| *c)
}

/// The layer of a `blk.N.…` name, read as C's `sscanf(name, "blk.%d.")` reads it.
fn layer_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start();
    let (sign, digits) = match rest.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, rest.strip_prefix('+').unwrap_or(rest)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse::<i64>().ok().map(|n| sign * n)
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// between.
fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

fn ggml(name: &str) -> GgmlType {
    GgmlType::from_name(name).expect("a ggml type")
}

/// A type as ArrowQuant names schemes (`q6_K`), else as ggml does (`IQ3_S`).
fn type_name(t: GgmlType) -> &'static str {
    Scheme::from_ggml_type(t.id).map_or(t.name, Scheme::name)
}

/// The counters llama.cpp keeps while it walks the tensors (`quantize_state_impl`).
struct State<'a> {
    recipe: Recipe,
    arch: &'a str,
    params: &'a ModelParams,
    imatrix: bool,
    n_layer: i64,
    n_attn_v: i64,
    tied: bool,
    i_attn_v: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

impl State<'_> {
    fn falcon(&self) -> bool {
        self.arch == "falcon"
    }

    /// llama.cpp's `LLM_TYPE_70B`, the only model type its rules read.
    fn is_70b(&self) -> bool {
        let p = self.params;
        match self.arch {
            "llama" => {
                let n_head = p.n_head.unwrap_or(0);
                self.n_layer == 80 && p.experts() != 8 && p.n_head_kv.unwrap_or(n_head) != n_head
            }
            "qwen2" | "deci" | "olmo" => self.n_layer == 80,
            "jais2" => self.n_layer == 68,
            _ => false,
        }
    }

    /// The layer a feed-forward rule reads: the counter, or with experts the name's layer.
    fn layer(&self, counter: i64, name: &str) -> Result<i64, RecipeError> {
        if self.params.experts() <= 1 {
            return Ok(counter);
        }
        let layer = layer_of(name).ok_or_else(|| RecipeError::NoLayer {
            recipe: self.recipe,
            tensor: name.to_string(),
        })?;
        if layer < 0 || layer >= self.n_layer {
            return Err(RecipeError::BadLayer {
                recipe: self.recipe,
                tensor: name.to_string(),
                layer,
                n_layer: self.n_layer,
            });
        }
        Ok(layer)
    }

    /// The type of one quantized tensor and, when a rule chose it, what the rule was.
    fn rule(
        &mut self,
        name: &str,
        dims: &[u64],
        cat: Category,
        base: GgmlType,
    ) -> Result<(GgmlType, Option<String>), RecipeError> {
        use Recipe as R;
        let r = self.recipe;
        let gqa = self.params.gqa();
        let experts = self.params.experts();
        let n = self.n_layer;
        let to = |t: &str, why: String| (ggml(t), Some(why));
        let keep = (base, None);

        if self.arch == "glm5-next"
            && ["attn_q_a", "attn_q_b", "nextn.eh_proj"]
                .iter()
                .any(|p| name.contains(p))
        {
            return Ok(to("Q8_0", format!("{name} of glm5-next, at least q8_0")));
        }

        if cat == Category::Output || (self.tied && cat == Category::TokenEmbd) {
            let what = if cat == Category::Output {
                "the output head".to_string()
            } else {
                "token_embd, tied to the output head (no output.weight)".to_string()
            };
            let nx = dims.first().copied().unwrap_or(0);
            return Ok(if self.falcon() {
                to("Q8_0", format!("{what} of Falcon"))
            } else if !nx.is_multiple_of(u64::from(base.block_values)) {
                to(
                    "Q8_0",
                    format!("{what}, rows of {nx} values not whole {} blocks", base.name),
                )
            } else if r == R::Iq3Xxs {
                to("Q5_K", what)
            } else if base.name != "Q8_0" {
                to("Q6_K", what)
            } else {
                keep
            });
        }

        if cat == Category::TokenEmbd {
            return Ok(match r {
                R::Iq3Xxs => to("IQ3_S", "token_embd".into()),
                _ => keep,
            });
        }

        if cat.is_attn_v() {
            let i = self.i_attn_v;
            let kind = match cat {
                Category::AttnQkv => "attn_qkv",
                Category::AttnKvB => "attn_kv_b",
                _ => "attn_v",
            };
            let at = format!("{kind} of layer {i} of {}", self.n_attn_v);
            let gqa_note = format!("{at} (grouped-query attention, {gqa} heads per kv head)");
            let mut chosen = match r {
                R::Q2K if gqa >= 4 => to("Q4_K", gqa_note),
                R::Q2K => to("Q3_K", at.clone()),
                R::Q2KS if gqa >= 4 => to("Q4_K", gqa_note),
                R::Iq3Xxs if gqa >= 4 => to("Q4_K", gqa_note),
                R::Iq3Xxs if !self.imatrix => to("IQ3_S", format!("{at} (no importance matrix)")),
                R::Iq3Xs | R::Iq3S if gqa >= 4 => to("Q4_K", gqa_note),
                R::Iq3M => to("Q4_K", at.clone()),
                R::Q3KM if i < 2 => to("Q5_K", format!("{at} (the first two)")),
                R::Q3KM => to("Q4_K", at.clone()),
                R::Q3KL => to("Q5_K", at.clone()),
                R::Iq4Nl | R::Iq4Xs if gqa >= 4 => to("Q5_K", gqa_note),
                R::Q4KM | R::Q5KM if use_more_bits(i, self.n_attn_v) => {
                    to("Q6_K", format!("{at} (use_more_bits)"))
                }
                R::Q4KS if i < 4 => to("Q5_K", format!("{at} (the first four)")),
                _ => keep,
            };
            if self.is_70b() && matches!(chosen.0.name, "Q3_K" | "Q4_K") {
                chosen = to("Q5_K", format!("{at} of a 70B model"));
            }
            if experts == 8 {
                chosen = to("Q8_0", format!("{at} of a model with 8 experts"));
            }
            self.i_attn_v += 1;
            return Ok(chosen);
        }

        Ok(match cat {
            Category::AttnK => {
                let at = "attn_k".to_string();
                match r {
                    _ if experts == 8 => to("Q8_0", format!("{at} of a model with 8 experts")),
                    R::Iq3Xs => to("IQ3_XXS", at),
                    R::Iq3Xxs => to("IQ2_S", at),
                    _ => keep,
                }
            }
            Category::AttnQ => match r {
                R::Iq3Xs => to("IQ3_XXS", "attn_q".into()),
                R::Iq3Xxs => to("IQ2_S", "attn_q".into()),
                _ => keep,
            },
            Category::FfnDown => {
                let i = self.layer(self.i_ffn_down, name)?;
                let at = format!("ffn_down of layer {i} of {n}");
                let falcon = self.falcon();
                let chosen = match r {
                    R::Q2K => to("Q3_K", at),
                    R::Q2KS if i < n / 8 => to("Q4_K", format!("{at} (the first eighth)")),
                    R::Q2KS => keep,
                    R::Iq3Xxs if !self.imatrix => {
                        if i < n / 8 {
                            to(
                                "Q4_K",
                                format!("{at} (the first eighth, no importance matrix)"),
                            )
                        } else {
                            to("Q3_K", format!("{at} (no importance matrix)"))
                        }
                    }
                    R::Q3KM if i < n / 16 => to("Q5_K", format!("{at} (the first sixteenth)")),
                    R::Q3KM if !falcon || use_more_bits(i, n) => to("Q4_K", at),
                    R::Q3KM => keep,
                    R::Iq3M if i < n / 8 => to("Q4_K", format!("{at} (the first eighth)")),
                    R::Iq3M if experts == 8 && use_more_bits(i, n) => {
                        to("Q4_K", format!("{at} (8 experts, use_more_bits)"))
                    }
                    R::Q3KL if falcon => to("Q4_K", format!("{at} of Falcon")),
                    R::Q3KL => to("Q5_K", at),
                    R::Q4KM if falcon && i < n / 16 => {
                        to("Q6_K", format!("{at} of Falcon (the first sixteenth)"))
                    }
                    R::Q4KM if falcon && use_more_bits(i, n) => {
                        to("Q5_K", format!("{at} of Falcon (use_more_bits)"))
                    }
                    R::Q4KM if !falcon && use_more_bits(i, n) => {
                        to("Q6_K", format!("{at} (use_more_bits)"))
                    }
                    R::Iq4Nl | R::Iq4Xs if i < n / 8 && !self.imatrix => to(
                        "Q5_K",
                        format!("{at} (the first eighth, no importance matrix)"),
                    ),
                    R::Q5KM if use_more_bits(i, n) => to("Q6_K", format!("{at} (use_more_bits)")),
                    R::Q4KS if !falcon && i < n / 8 => {
                        to("Q5_K", format!("{at} (the first eighth)"))
                    }
                    R::Q4_0 if self.imatrix && i < n / 8 => to(
                        "Q4_1",
                        format!("{at} (the first eighth, with an importance matrix)"),
                    ),
                    R::Q5_0 if self.imatrix && i < n / 8 => to(
                        "Q5_1",
                        format!("{at} (the first eighth, with an importance matrix)"),
                    ),
                    _ => keep,
                };
                self.i_ffn_down += 1;
                chosen
            }
            Category::AttnOutput => {
                let at = "attn_output".to_string();
                if self.falcon() {
                    match r {
                        R::Q3KL => to("Q4_K", format!("{at} of Falcon")),
                        _ => keep,
                    }
                } else if experts == 8 {
                    match r {
                        R::Q2K
                        | R::Iq3Xs
                        | R::Iq3Xxs
                        | R::Q3KS
                        | R::Q3KM
                        | R::Iq4Nl
                        | R::Q4KS
                        | R::Q4KM
                        | R::Iq3S
                        | R::Iq3M
                        | R::Iq4Xs => to("Q5_K", format!("{at} of a model with 8 experts")),
                        _ => keep,
                    }
                } else {
                    match r {
                        R::Q2K => to("Q3_K", at),
                        R::Iq3Xxs => to("IQ3_S", at),
                        R::Q3KM | R::Iq3M => to("Q4_K", at),
                        R::Q3KL => to("Q5_K", at),
                        _ => keep,
                    }
                }
            }
            Category::FfnGate | Category::FfnUp => {
                let (counter, kind) = if cat == Category::FfnGate {
                    (&mut self.i_ffn_gate, "ffn_gate")
                } else {
                    (&mut self.i_ffn_up, "ffn_up")
                };
                let at = *counter;
                *counter += 1;
                let i = self.layer(at, name)?;
                match r {
                    R::Iq3Xs if i >= n / 8 && i < 7 * n / 8 => to(
                        "IQ3_XXS",
                        format!("{kind} of layer {i} of {n} (not the first or last eighth)"),
                    ),
                    _ => keep,
                }
            }
            _ => keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tensors of a dense Llama-like model: hidden 4096, ffn 11008, `n` layers.
    fn llama(n: usize, tied: bool) -> Vec<(String, Vec<u64>)> {
        let mut t = vec![
            ("token_embd.weight".to_string(), vec![4096, 32000]),
            ("output_norm.weight".to_string(), vec![4096]),
        ];
        if !tied {
            t.push(("output.weight".to_string(), vec![4096, 32000]));
        }
        for i in 0..n {
            for (part, dims) in [
                ("attn_norm", vec![4096]),
                ("attn_q", vec![4096, 4096]),
                ("attn_k", vec![4096, 1024]),
                ("attn_v", vec![4096, 1024]),
                ("attn_output", vec![4096, 4096]),
                ("ffn_norm", vec![4096]),
                ("ffn_gate", vec![4096, 11008]),
                ("ffn_up", vec![4096, 11008]),
                ("ffn_down", vec![11008, 4096]),
            ] {
                t.push((format!("blk.{i}.{part}.weight"), dims));
            }
        }
        t
    }

    fn types(
        recipe: Recipe,
        arch: &str,
        params: ModelParams,
        tensors: &[(String, Vec<u64>)],
    ) -> Vec<(String, &'static str)> {
        let list: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        llama_cpp_types(recipe, arch, &params, false, &list)
            .expect("types")
            .into_iter()
            .map(|t| (t.name, t.ggml.name))
            .collect()
    }

    fn of<'a>(types: &'a [(String, &'static str)], name: &str) -> &'a str {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{name} not quantized"))
    }

    fn layers_with(types: &[(String, &'static str)], part: &str, ty: &str) -> Vec<usize> {
        (0..100)
            .filter(|i| {
                let name = format!("blk.{i}.{part}.weight");
                types.iter().any(|(n, t)| *n == name && *t == ty)
            })
            .collect()
    }

    const LLAMA_7B: ModelParams = ModelParams {
        n_layer: Some(32),
        n_head: Some(32),
        n_head_kv: Some(32),
        n_expert: None,
    };

    #[test]
    fn names_parse_case_insensitively_and_errors_list_every_recipe() {
        for (recipe, name) in Recipe::ALL.iter().zip(Recipe::NAMES) {
            assert_eq!(recipe.name(), name);
            assert_eq!(Recipe::parse(name), Ok(*recipe));
            assert_eq!(Recipe::parse(&name.to_lowercase()), Ok(*recipe));
        }
        assert_eq!(Recipe::parse(" q4_k_m "), Ok(Recipe::Q4KM));
        let err = Recipe::parse("Q4_K_X").unwrap_err();
        assert!(err.contains("'Q4_K_X'"), "{err}");
        for name in Recipe::NAMES {
            assert!(err.contains(name), "{err} lacks {name}");
        }
        assert_eq!(Recipe::Iq3M.base_type().name, "IQ3_S");
        assert_eq!(Recipe::Q4KM.base_type().name, "Q4_K");
    }

    #[test]
    fn q4_k_m_gives_use_more_bits_layers_q6_k() {
        let t = types(Recipe::Q4KM, "llama", LLAMA_7B, &llama(32, false));
        // 32 layers: the first 4, the last 4, and every third from layer 6.
        let more = vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
        assert_eq!(layers_with(&t, "attn_v", "Q6_K"), more);
        assert_eq!(layers_with(&t, "ffn_down", "Q6_K"), more);
        assert_eq!(layers_with(&t, "attn_v", "Q4_K").len(), 16);
        assert_eq!(of(&t, "output.weight"), "Q6_K");
        assert_eq!(of(&t, "token_embd.weight"), "Q4_K");
        assert_eq!(of(&t, "blk.5.attn_q.weight"), "Q4_K");
        assert_eq!(of(&t, "blk.5.ffn_gate.weight"), "Q4_K");
        assert!(t.iter().all(|(n, _)| !n.contains("norm")));
    }

    #[test]
    fn tied_embeddings_take_the_output_rule() {
        let t = types(Recipe::Q4KM, "llama", LLAMA_7B, &llama(4, true));
        assert_eq!(of(&t, "token_embd.weight"), "Q6_K");
        let t = types(Recipe::Q8_0, "llama", LLAMA_7B, &llama(4, true));
        assert_eq!(of(&t, "token_embd.weight"), "Q8_0");
        let t = types(Recipe::Q4_0, "llama", LLAMA_7B, &llama(4, false));
        assert_eq!(of(&t, "output.weight"), "Q6_K");
        // rows of 384 are not whole q4_K blocks: the head takes q8_0, not q6_K
        let bert = vec![("token_embd.weight".to_string(), vec![384, 30522])];
        let t = types(Recipe::Q4KM, "bert", ModelParams::default(), &bert);
        assert_eq!(of(&t, "token_embd.weight"), "Q8_0");
        let t = types(Recipe::Q4KM, "falcon", LLAMA_7B, &llama(4, false));
        assert_eq!(of(&t, "output.weight"), "Q8_0");
        let t = types(Recipe::Iq3Xxs, "llama", LLAMA_7B, &llama(4, false));
        assert_eq!(of(&t, "output.weight"), "Q5_K");
        assert_eq!(of(&t, "token_embd.weight"), "IQ3_S");
    }

    #[test]
    fn q3_k_m_and_q4_k_s_count_attn_v_from_the_start() {
        let t = types(Recipe::Q3KM, "llama", LLAMA_7B, &llama(32, false));
        assert_eq!(layers_with(&t, "attn_v", "Q5_K"), vec![0, 1]);
        assert_eq!(layers_with(&t, "attn_v", "Q4_K").len(), 30);
        assert_eq!(layers_with(&t, "ffn_down", "Q5_K"), vec![0, 1]);
        assert_eq!(layers_with(&t, "ffn_down", "Q4_K").len(), 30);
        assert_eq!(of(&t, "blk.7.attn_output.weight"), "Q4_K");
        assert_eq!(of(&t, "blk.7.attn_q.weight"), "Q3_K");
        let t = types(Recipe::Q4KS, "llama", LLAMA_7B, &llama(32, false));
        assert_eq!(layers_with(&t, "attn_v", "Q5_K"), vec![0, 1, 2, 3]);
        assert_eq!(layers_with(&t, "ffn_down", "Q5_K"), vec![0, 1, 2, 3]);
    }

    #[test]
    fn grouped_query_attention_experts_and_70b_raise_attn_v() {
        let gqa = ModelParams {
            n_head_kv: Some(8),
            ..LLAMA_7B
        };
        let t = types(Recipe::Q2K, "llama", gqa, &llama(32, false));
        assert_eq!(of(&t, "blk.9.attn_v.weight"), "Q4_K");
        let t = types(Recipe::Q2K, "llama", LLAMA_7B, &llama(32, false));
        assert_eq!(of(&t, "blk.9.attn_v.weight"), "Q3_K");
        assert_eq!(of(&t, "blk.9.ffn_down.weight"), "Q3_K");
        assert_eq!(of(&t, "blk.9.attn_output.weight"), "Q3_K");

        let big = ModelParams {
            n_layer: Some(80),
            n_head: Some(64),
            n_head_kv: Some(8),
            n_expert: None,
        };
        let t = types(Recipe::Q3KS, "llama", big, &llama(80, false));
        assert_eq!(layers_with(&t, "attn_v", "Q5_K").len(), 80);
        let same_heads = ModelParams {
            n_head_kv: Some(64),
            ..big
        };
        let t = types(Recipe::Q3KS, "llama", same_heads, &llama(80, false));
        assert_eq!(layers_with(&t, "attn_v", "Q3_K").len(), 80);

        let moe = ModelParams {
            n_expert: Some(8),
            ..LLAMA_7B
        };
        let t = types(Recipe::Q4KM, "llama", moe, &llama(8, false));
        assert_eq!(of(&t, "blk.3.attn_v.weight"), "Q8_0");
        assert_eq!(of(&t, "blk.3.attn_k.weight"), "Q8_0");
        assert_eq!(of(&t, "blk.3.attn_output.weight"), "Q5_K");
    }

    #[test]
    fn reasons_name_the_rule_and_base_choices_have_none() {
        let tensors = llama(32, false);
        let list: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let a = assign(Recipe::Q4KM, "llama", &LLAMA_7B, false, &list).expect("assign");
        let v3 = a.iter().find(|t| t.name == "blk.3.attn_v.weight").unwrap();
        assert_eq!(v3.scheme, Scheme::Q6K);
        assert_eq!(
            v3.reason.as_deref(),
            Some("Q4_K_M: attn_v of layer 3 of 32 (use_more_bits): q6_K")
        );
        assert_eq!(tensors[v3.index].0, v3.name);
        let q = a.iter().find(|t| t.name == "blk.3.attn_q.weight").unwrap();
        assert_eq!((q.scheme, q.reason.as_deref()), (Scheme::Q4K, None));
        // in the order given, only the quantized tensors
        assert!(a.windows(2).all(|w| w[0].index < w[1].index));
        assert_eq!(a.len(), 2 + 7 * 32);
    }

    #[test]
    fn a_type_without_a_scheme_is_refused_by_name() {
        let tensors = llama(8, false);
        let list: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let err = assign(Recipe::Iq3M, "llama", &LLAMA_7B, false, &list).unwrap_err();
        assert_eq!(
            err,
            RecipeError::NoScheme {
                recipe: Recipe::Iq3M,
                tensor: "token_embd.weight".into(),
                ggml: "IQ3_S",
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("IQ3_M") && text.contains("token_embd.weight"),
            "{text}"
        );
        // the rules themselves still answer, in ggml types
        let types = llama_cpp_types(Recipe::Iq3M, "llama", &LLAMA_7B, false, &list).unwrap();
        assert!(types.iter().any(|t| t.ggml.name == "Q4_K"));
    }

    #[test]
    fn imatrix_rules_and_expert_layers() {
        let tensors = llama(16, false);
        let list: Vec<(&str, &[u64])> = tensors
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let p = ModelParams {
            n_layer: Some(16),
            ..LLAMA_7B
        };
        let with = assign(Recipe::Q4_0, "llama", &p, true, &list).unwrap();
        let without = assign(Recipe::Q4_0, "llama", &p, false, &list).unwrap();
        let down = |a: &[Assignment], i: usize| {
            let name = format!("blk.{i}.ffn_down.weight");
            a.iter().find(|t| t.name == name).unwrap().scheme
        };
        assert_eq!(
            (down(&with, 1), down(&with, 2)),
            (Scheme::Q4_1, Scheme::Q4_0)
        );
        assert_eq!(down(&without, 1), Scheme::Q4_0);
        let nl = assign(Recipe::Iq4Nl, "llama", &p, false, &list).unwrap();
        assert_eq!((down(&nl, 1), down(&nl, 2)), (Scheme::Q5K, Scheme::Iq4Nl));

        let moe = ModelParams {
            n_layer: Some(2),
            n_expert: Some(4),
            ..LLAMA_7B
        };
        let bad: Vec<(&str, &[u64])> = vec![("blk.7.ffn_down_exps.weight", &[512, 256, 4])];
        let err = assign(Recipe::Q4KM, "llama", &moe, false, &bad).unwrap_err();
        assert!(
            matches!(err, RecipeError::BadLayer { layer: 7, .. }),
            "{err}"
        );
        let bad: Vec<(&str, &[u64])> = vec![("ffn_down_exps.weight", &[512, 256, 4])];
        let err = assign(Recipe::Q4KM, "llama", &moe, false, &bad).unwrap_err();
        assert!(matches!(err, RecipeError::NoLayer { .. }), "{err}");
    }

    #[test]
    fn layers_are_read_as_llama_cpp_reads_them() {
        assert_eq!(layer_of("blk.12.attn_v.weight"), Some(12));
        assert_eq!(layer_of("blk.3x"), Some(3));
        assert_eq!(layer_of("token_embd.weight"), None);
        assert_eq!(layer_of("blk.attn"), None);
        assert_eq!(category("blk.0.ffn_gate_exps.weight"), Category::FfnGate);
        assert_eq!(category("blk.0.attn_qkv.weight"), Category::AttnQkv);
        // six layers (BERT's MiniLM): no first eighth, the last eighth from layer 5
        let more: Vec<i64> = (0..6).filter(|&i| use_more_bits(i, 6)).collect();
        assert_eq!(more, vec![2, 5]);
    }
}
