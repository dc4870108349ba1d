//! Dependency resolution with resolvo (a CDCL SAT solver).
//!
//! Model: each package version is a solvable named after the package. Each
//! `Provides: v [(= ver)]` adds a "v via P" solvable under the name `v` that
//! requires exactly P, so a dependency on a virtual package picks a provider.
//! Conflicts and Breaks become constraints on the conflicting name. Packages
//! already installed in the base are favoured and taken as satisfied.
//! Candidates are ordered deterministically (installed, highest version,
//! then name), so the same inputs always give the same set.

use std::collections::HashMap;
use std::fmt;

use resolvo::utils::{Pool, VersionSet};
use resolvo::{
    Candidates, Condition, ConditionId, ConditionalRequirement, Dependencies, DependencyProvider,
    HintDependenciesAvailable, Interner, KnownDependencies, NameId, Problem, Requirement,
    SolvableId, Solver, SolverCache, StringId, UnsolvableOrCancelled, VersionSetId,
    VersionSetUnionId,
};

use super::control::{Dep, Relation, Version};
use super::repo::Package;
use crate::error::{Error, Result};

/// What a solvable stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rec {
    /// Index into the package list.
    Real(usize),
    /// `name` provided by package index `by`, with the provided version if any.
    Provided { by: usize, version: Option<Version> },
}

/// A set of solvables of one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Set {
    /// Satisfies the dependency (name is the set's name).
    Matches(Option<(Relation, Version)>),
    /// Exactly this package (a provider route requires its provider).
    Exactly(usize),
    /// Allowed next to a package that conflicts with `(rel, ver)` (self excepted).
    Avoiding {
        constraint: Option<(Relation, Version)>,
        except: usize,
    },
}

#[derive(Clone, Debug)]
pub struct Shown(String);
impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl VersionSet for Set {
    type V = RecShown;
}

/// A record plus its display text (resolvo displays records in explanations).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RecShown {
    pub rec: Rec,
    pub text: String,
}
impl fmt::Display for RecShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

pub struct Provider<'a> {
    pub pool: Pool<Set, String>,
    packages: &'a [Package],
    by_name: HashMap<NameId, Vec<SolvableId>>,
    /// Names asked for directly: as providers of a virtual package they come first.
    pub requested: std::collections::HashSet<String>,
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

impl<'a> Provider<'a> {
    pub fn new(packages: &'a [Package]) -> Self {
        let pool: Pool<Set, String> = Pool::new();
        let mut by_name: HashMap<NameId, Vec<SolvableId>> = HashMap::new();
        for (i, p) in packages.iter().enumerate() {
            let n = pool.intern_package_name(p.name.clone());
            // resolvo prints the name itself; the record shows the version.
            let text = format!(
                "{}{}",
                p.version,
                if p.installed { " (installed)" } else { "" }
            );
            let s = pool.intern_solvable(
                n,
                RecShown {
                    rec: Rec::Real(i),
                    text,
                },
            );
            by_name.entry(n).or_default().push(s);
            for v in &p.provides {
                let vn = pool.intern_package_name(v.name.clone());
                let version = v
                    .constraint
                    .as_ref()
                    .filter(|(r, _)| *r == Relation::Eq)
                    .map(|(_, v)| v.clone());
                let text = format!("(provided by {} {})", p.name, p.version);
                let s = pool.intern_solvable(
                    vn,
                    RecShown {
                        rec: Rec::Provided { by: i, version },
                        text,
                    },
                );
                by_name.entry(vn).or_default().push(s);
            }
        }
        Provider {
            pool,
            packages,
            by_name,
            requested: Default::default(),
        }
    }

    fn rec(&self, s: SolvableId) -> &Rec {
        &self.pool.resolve_solvable(s).record.rec
    }

    fn matches(&self, set: &Set, s: SolvableId) -> bool {
        match (set, self.rec(s)) {
            (Set::Matches(c), Rec::Real(i)) => c
                .as_ref()
                .is_none_or(|(r, v)| r.holds(&self.packages[*i].version, v)),
            (Set::Matches(c), Rec::Provided { version, .. }) => match (c, version) {
                (None, _) => true,
                (Some((r, want)), Some(have)) => r.holds(have, want),
                (Some(_), None) => false,
            },
            (Set::Exactly(i), Rec::Real(j)) => i == j,
            (Set::Exactly(_), _) => false,
            (Set::Avoiding { constraint, except }, rec) => {
                let (idx, version) = match rec {
                    Rec::Real(i) => (*i, Some(&self.packages[*i].version)),
                    Rec::Provided { by, version } => (*by, version.as_ref()),
                };
                if idx == *except || self.packages[idx].name == self.packages[*except].name {
                    return true;
                }
                let hit = match (constraint, version) {
                    (None, _) => true,
                    (Some((r, want)), Some(have)) => r.holds(have, want),
                    (Some(_), None) => false,
                };
                !hit
            }
        }
    }

    /// A version set for a dependency alternative (`:any`/`:native` qualifiers dropped).
    pub fn dep_set(&self, d: &Dep) -> VersionSetId {
        let n = self.pool.intern_package_name(d.name.clone());
        self.pool
            .intern_version_set(n, Set::Matches(d.constraint.clone()))
    }

    /// A requirement for one dependency group (alternatives → a union).
    pub fn requirement(&self, group: &[Dep]) -> Requirement {
        let sets: Vec<VersionSetId> = group.iter().map(|d| self.dep_set(d)).collect();
        if sets.len() == 1 {
            Requirement::Single(sets[0])
        } else {
            Requirement::Union(
                self.pool
                    .intern_version_set_union(sets[0], sets[1..].iter().copied()),
            )
        }
    }
}

impl Interner for Provider<'_> {
    type NameId = NameId;
    type SolvableId = SolvableId;

    fn display_solvable(&self, s: SolvableId) -> impl fmt::Display + '_ {
        self.pool.resolve_solvable(s).record.clone()
    }
    fn display_name(&self, name: NameId) -> impl fmt::Display + '_ {
        self.pool.resolve_package_name(name).clone()
    }
    fn display_version_set(&self, vs: VersionSetId) -> impl fmt::Display + '_ {
        Shown(match self.pool.resolve_version_set(vs) {
            Set::Matches(None) => "*".into(),
            Set::Matches(Some((r, v))) => format!("{} {v}", r.symbol()),
            Set::Exactly(i) => format!("= {}", self.packages[*i].version),
            Set::Avoiding {
                constraint: None,
                except,
            } => format!("(conflicts with {})", self.packages[*except].name),
            Set::Avoiding {
                constraint: Some((r, v)),
                except,
            } => {
                format!(
                    "not {} {v} (conflicts with {})",
                    r.symbol(),
                    self.packages[*except].name
                )
            }
        })
    }
    fn display_string(&self, s: StringId) -> impl fmt::Display + '_ {
        self.pool.resolve_string(s).to_string()
    }
    fn version_set_name(&self, vs: VersionSetId) -> NameId {
        self.pool.resolve_version_set_package_name(vs)
    }
    fn solvable_name(&self, s: SolvableId) -> NameId {
        self.pool.resolve_solvable(s).name
    }
    fn version_sets_in_union(&self, u: VersionSetUnionId) -> impl Iterator<Item = VersionSetId> {
        self.pool.resolve_version_set_union(u)
    }
    fn resolve_condition(&self, c: ConditionId) -> Condition {
        self.pool.resolve_condition(c).clone()
    }
}

impl DependencyProvider for Provider<'_> {
    async fn filter_candidates(
        &self,
        candidates: &[SolvableId],
        vs: VersionSetId,
        inverse: bool,
    ) -> Vec<SolvableId> {
        let set = self.pool.resolve_version_set(vs);
        candidates
            .iter()
            .copied()
            .filter(|s| self.matches(set, *s) != inverse)
            .collect()
    }

    async fn get_candidates(&self, name: NameId) -> Option<Candidates> {
        let list = self.by_name.get(&name)?;
        let only_virtual = list
            .iter()
            .all(|s| matches!(self.rec(*s), Rec::Provided { .. }));
        Some(Candidates {
            candidates: list.clone(),
            favored: list
                .iter()
                .copied()
                .find(|s| matches!(self.rec(*s), Rec::Real(i) if self.packages[*i].installed)),
            hint_dependencies_available: HintDependenciesAvailable::All,
            // Several packages may provide one virtual package at once.
            allow_multiple: only_virtual,
            ..Default::default()
        })
    }

    async fn sort_candidates(&self, _solver: &SolverCache<Self>, solvables: &mut [SolvableId]) {
        let key = |s: &SolvableId| {
            let (i, provided) = match self.rec(*s) {
                Rec::Real(i) => (*i, false),
                Rec::Provided { by, .. } => (*by, true),
            };
            let p = &self.packages[i];
            (
                !(p.installed || self.requested.contains(&p.name)),
                provided,
                priority_rank(&p.priority),
                p.name.clone(),
                std::cmp::Reverse(p.version.clone()),
                i,
            )
        };
        solvables.sort_by_key(key);
    }

    async fn get_dependencies(&self, s: SolvableId) -> Dependencies {
        let mut deps = KnownDependencies::default();
        match self.rec(s).clone() {
            Rec::Provided { by, .. } => {
                let n = self
                    .pool
                    .intern_package_name(self.packages[by].name.clone());
                let vs = self.pool.intern_version_set(n, Set::Exactly(by));
                deps.requirements
                    .push(ConditionalRequirement::from(Requirement::Single(vs)));
            }
            Rec::Real(i) => {
                let p = &self.packages[i];
                if p.installed {
                    return Dependencies::Known(deps);
                }
                for group in &p.depends {
                    deps.requirements.push(self.requirement(group).into());
                }
                for c in &p.conflicts {
                    let n = self.pool.intern_package_name(c.name.clone());
                    let vs = self.pool.intern_version_set(
                        n,
                        Set::Avoiding {
                            constraint: c.constraint.clone(),
                            except: i,
                        },
                    );
                    deps.constrains.push(vs);
                }
            }
        }
        Dependencies::Known(deps)
    }
}

/// Solve `requests` (each a group of alternatives); returns indexes of the
/// packages to install (installed ones excluded), sorted by name.
pub fn solve(packages: &[Package], requests: &[Vec<Dep>]) -> Result<Vec<usize>> {
    let mut provider = Provider::new(packages);
    provider.requested = requests.iter().flatten().map(|d| d.name.clone()).collect();
    let mut reqs: Vec<ConditionalRequirement> = Vec::new();
    for r in requests {
        for d in r {
            let n = provider.pool.intern_package_name(d.name.clone());
            if !provider.by_name.contains_key(&n) {
                return Err(Error::input(format!(
                    "apt: unknown package `{}`: no configured repository has it",
                    d.name
                )));
            }
        }
        reqs.push(provider.requirement(r).into());
    }
    let mut solver = Solver::new(provider);
    let problem = Problem::new().requirements(reqs);
    let solution = match solver.solve(problem) {
        Ok(s) => s,
        Err(UnsolvableOrCancelled::Unsolvable(conflict)) => {
            let text = conflict.display_user_friendly(&solver).to_string();
            return Err(Error::input(format!(
                "apt: the requested packages cannot be installed together:\n{text}"
            )));
        }
        Err(UnsolvableOrCancelled::Cancelled(_)) => {
            return Err(Error::internal("apt: solver cancelled"))
        }
    };
    let provider = solver.provider();
    let mut out: Vec<usize> = solution
        .into_iter()
        .filter_map(|s| match provider.rec(s) {
            Rec::Real(i) if !packages[*i].installed => Some(*i),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| packages[*a].name.cmp(&packages[*b].name));
    out.dedup();
    Ok(out)
}
