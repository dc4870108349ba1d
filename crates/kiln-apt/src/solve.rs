//! Dependency resolution with resolvo (a CDCL SAT solver).
//!
//! Model: each package version is a solvable named after the package, and
//! after its architecture when that is a foreign one (`libc6:i386`;
//! `Architecture: all` counts as native), so one version per name and
//! architecture is installed. Each `Provides: v [(= ver)]` adds a "v via P"
//! solvable under the name `v` (qualified the same way) that requires
//! exactly P, so a dependency on a virtual package picks a provider.
//!
//! Multi-Arch: a plain dependency of a package of architecture A is met by
//! the name at A, or at another architecture by a `Multi-Arch: foreign`
//! package; `name:any` also accepts `Multi-Arch: allowed`; `name:native`
//! only the native one. Packages not `Multi-Arch: same` forbid their own
//! name at other architectures; `same` ones require the same version there.
//! Conflicts and Breaks constrain the name at every architecture. Packages
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
use crate::AptError;
use kiln_core::error::Result;
use kiln_core::suggest::{self, Missing};

/// What a solvable stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Rec {
    /// Index into the package list.
    Real(usize),
    /// `name` provided by package index `by`, with the provided version if any.
    Provided { by: usize, version: Option<Version> },
}

/// Which packages of another architecture may satisfy a dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum CrossArch {
    /// The dependency names this architecture: anything matches.
    Any,
    /// A plain dependency met across architectures: `Multi-Arch: foreign`.
    Foreign,
    /// `name:any`: `Multi-Arch: foreign` or `allowed`.
    ForeignOrAllowed,
}

/// A set of solvables of one name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Set {
    /// Satisfies the dependency (name is the set's name).
    Matches(Option<(Relation, Version)>, CrossArch),
    /// The same package at another architecture: allowed only for a
    /// `Multi-Arch: same` package at the same version (`Some(i)`), else never.
    OtherArch(Option<usize>),
    /// Exactly this package (a provider route requires its provider).
    Exactly(usize),
    /// Allowed next to a package that conflicts with `(rel, ver)` (self excepted).
    Avoiding {
        constraint: Option<(Relation, Version)>,
        except: usize,
    },
}

#[derive(Clone, Debug)]
struct Shown(String);
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
struct RecShown {
    rec: Rec,
    text: String,
}
impl fmt::Display for RecShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct Provider<'a> {
    pool: Pool<Set, String>,
    packages: &'a [Package],
    native: String,
    /// Every architecture in the universe, native first.
    archs: Vec<String>,
    by_name: HashMap<NameId, Vec<SolvableId>>,
    /// Names asked for directly: as providers of a virtual package they come first.
    requested: std::collections::HashSet<String>,
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

/// The architecture a package counts as (`all` is native).
fn effective_arch<'p>(p: &'p Package, native: &'p str) -> &'p str {
    super::repo::effective_arch(&p.arch, native)
}

/// The solver's name for `name` at `arch`.
fn qualified(name: &str, arch: &str, native: &str) -> String {
    if arch == native {
        name.to_string()
    } else {
        format!("{name}:{arch}")
    }
}

impl<'a> Provider<'a> {
    fn new(packages: &'a [Package], native: &str) -> Self {
        let pool: Pool<Set, String> = Pool::new();
        let mut by_name: HashMap<NameId, Vec<SolvableId>> = HashMap::new();
        let mut archs: Vec<String> = vec![native.to_string()];
        for p in packages {
            let a = effective_arch(p, native);
            if !archs.iter().any(|x| x == a) {
                archs.push(a.to_string());
            }
        }
        archs[1..].sort();
        for (i, p) in packages.iter().enumerate() {
            let arch = effective_arch(p, native);
            let n = pool.intern_package_name(qualified(&p.name, arch, native));
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
                let vn = pool.intern_package_name(qualified(&v.name, arch, native));
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
            native: native.to_string(),
            archs,
            by_name,
            requested: Default::default(),
        }
    }

    fn known(&self, name: &str) -> Option<NameId> {
        let n = self.pool.intern_package_name(name.to_string());
        self.by_name.contains_key(&n).then_some(n)
    }

    fn rec(&self, s: SolvableId) -> &Rec {
        &self.pool.resolve_solvable(s).record.rec
    }

    fn matches(&self, set: &Set, s: SolvableId) -> bool {
        let multi_arch = |rec: &Rec| {
            let i = match rec {
                Rec::Real(i) | Rec::Provided { by: i, .. } => *i,
            };
            self.packages[i].multi_arch.as_str()
        };
        match (set, self.rec(s)) {
            (Set::Matches(_, cross), rec)
                if match cross {
                    CrossArch::Any => false,
                    CrossArch::Foreign => multi_arch(rec) != "foreign",
                    CrossArch::ForeignOrAllowed => {
                        !matches!(multi_arch(rec), "foreign" | "allowed")
                    }
                } =>
            {
                false
            }
            (Set::Matches(c, _), Rec::Real(i)) => c
                .as_ref()
                .is_none_or(|(r, v)| r.holds(&self.packages[*i].version, v)),
            (Set::Matches(c, _), Rec::Provided { version, .. }) => match (c, version) {
                (None, _) => true,
                (Some((r, want)), Some(have)) => r.holds(have, want),
                (Some(_), None) => false,
            },
            (Set::OtherArch(_), Rec::Provided { .. }) => true,
            (Set::OtherArch(None), Rec::Real(_)) => false,
            (Set::OtherArch(Some(i)), Rec::Real(j)) => {
                self.packages[*j].multi_arch == "same"
                    && self.packages[*j].version == self.packages[*i].version
            }
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

    /// The version sets that meet dependency alternative `d` of a package
    /// of architecture `from`: the name at `from`, or at other
    /// architectures as Multi-Arch allows. Names no package has are left
    /// out, unless nothing is left (the requirement then fails by name).
    fn dep_sets(&self, d: &Dep, from: &str) -> Vec<VersionSetId> {
        let c = d.constraint.clone();
        let mut wanted: Vec<(String, CrossArch)> = match d.arch.as_deref() {
            Some("native") => vec![(d.name.clone(), CrossArch::Any)],
            Some(a) if a != "any" => vec![(qualified(&d.name, a, &self.native), CrossArch::Any)],
            q => {
                let cross = if q == Some("any") {
                    CrossArch::ForeignOrAllowed
                } else {
                    CrossArch::Foreign
                };
                let mut v = vec![(qualified(&d.name, from, &self.native), CrossArch::Any)];
                for a in self.archs.iter().filter(|a| *a != from) {
                    v.push((qualified(&d.name, a, &self.native), cross));
                }
                v
            }
        };
        let first = wanted[0].clone();
        wanted.retain(|(n, _)| self.known(n).is_some());
        if wanted.is_empty() {
            wanted.push(first);
        }
        wanted
            .into_iter()
            .map(|(n, cross)| {
                let n = self.pool.intern_package_name(n);
                self.pool
                    .intern_version_set(n, Set::Matches(c.clone(), cross))
            })
            .collect()
    }

    /// A requirement for one dependency group of a package of architecture
    /// `from` (alternatives → a union).
    fn requirement(&self, group: &[Dep], from: &str) -> Requirement {
        let sets: Vec<VersionSetId> = group.iter().flat_map(|d| self.dep_sets(d, from)).collect();
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
            Set::Matches(None, CrossArch::Any) => "*".into(),
            Set::Matches(Some((r, v)), CrossArch::Any) => format!("{} {v}", r.symbol()),
            Set::Matches(None, _) => "* (Multi-Arch: foreign)".into(),
            Set::Matches(Some((r, v)), _) => format!("{} {v} (Multi-Arch: foreign)", r.symbol()),
            Set::OtherArch(None) => "(not co-installable across architectures)".into(),
            Set::OtherArch(Some(i)) => format!(
                "= {} (Multi-Arch: same, at every architecture)",
                self.packages[*i].version
            ),
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
                let p = &self.packages[by];
                let n = self.pool.intern_package_name(qualified(
                    &p.name,
                    effective_arch(p, &self.native),
                    &self.native,
                ));
                let vs = self.pool.intern_version_set(n, Set::Exactly(by));
                deps.requirements
                    .push(ConditionalRequirement::from(Requirement::Single(vs)));
            }
            Rec::Real(i) => {
                let p = &self.packages[i];
                if p.installed {
                    return Dependencies::Known(deps);
                }
                let arch = effective_arch(p, &self.native);
                for group in &p.depends {
                    deps.requirements.push(self.requirement(group, arch).into());
                }
                for c in &p.conflicts {
                    for a in &self.archs {
                        if c.arch.as_deref().is_some_and(|q| q != a && q != "any") {
                            continue;
                        }
                        let Some(n) = self.known(&qualified(&c.name, a, &self.native)) else {
                            continue;
                        };
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
                // One architecture only, unless Multi-Arch: same (then one version).
                let same = (p.multi_arch == "same").then_some(i);
                for a in self.archs.iter().filter(|a| *a != arch) {
                    if let Some(n) = self.known(&qualified(&p.name, a, &self.native)) {
                        deps.constrains
                            .push(self.pool.intern_version_set(n, Set::OtherArch(same)));
                    }
                }
            }
        }
        Dependencies::Known(deps)
    }
}

/// Solve `requests` (each a group of alternatives; an alternative's arch
/// is a concrete architecture or none for `native`); returns indexes of the
/// packages to install (installed ones excluded), sorted by name and arch.
#[cfg(test)]
pub(crate) fn solve(
    packages: &[Package],
    native: &str,
    requests: &[Vec<Dep>],
) -> Result<Vec<usize>> {
    solve_asked(packages, native, requests, &[], &|_| Vec::new())
}

/// [`solve`], with the first `asked.len()` requests as the user wrote
/// them (`python3=3.11`) and where (`None`: kiln.toml, else `apt.txt:3`),
/// for the message naming every request that does not exist.
/// `more_names(arch)`: names at `arch` of packages left out of `packages`
/// (not reachable from the requests), for its suggestions.
pub(crate) fn solve_asked(
    packages: &[Package],
    native: &str,
    requests: &[Vec<Dep>],
    asked: &[(String, Option<String>)],
    more_names: &dyn Fn(&str) -> Vec<String>,
) -> Result<Vec<usize>> {
    let mut provider = Provider::new(packages, native);
    provider.requested = requests.iter().flatten().map(|d| d.name.clone()).collect();
    let missing = missing(&provider, packages, native, requests, asked, more_names);
    if !missing.is_empty() {
        return Err(AptError::UnknownPackages { missing }.into());
    }
    let mut reqs: Vec<ConditionalRequirement> = Vec::new();
    for r in requests {
        reqs.push(provider.requirement(r, native).into());
    }
    let mut solver = Solver::new(provider);
    let problem = Problem::new().requirements(reqs);
    let solution = match solver.solve(problem) {
        Ok(s) => s,
        Err(UnsolvableOrCancelled::Unsolvable(conflict)) => {
            let explanation = conflict.display_user_friendly(&solver).to_string();
            return Err(AptError::Unsatisfiable { explanation }.into());
        }
        Err(UnsolvableOrCancelled::Cancelled(_)) => return Err(AptError::SolverCancelled.into()),
    };
    let provider = solver.provider();
    let mut out: Vec<usize> = solution
        .into_iter()
        .filter_map(|s| match provider.rec(s) {
            Rec::Real(i) if !packages[*i].installed => Some(*i),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| {
        (&packages[*a].name, &packages[*a].arch).cmp(&(&packages[*b].name, &packages[*b].arch))
    });
    out.dedup();
    Ok(out)
}

/// Every request whose name no package has (at its architecture), or
/// whose `=version` no package of that name has.
fn missing(
    provider: &Provider,
    packages: &[Package],
    native: &str,
    requests: &[Vec<Dep>],
    asked: &[(String, Option<String>)],
    more_names: &dyn Fn(&str) -> Vec<String>,
) -> Vec<Missing> {
    let mut out = Vec::new();
    let mut names: Option<std::collections::BTreeSet<String>> = None;
    for (n, r) in requests.iter().enumerate() {
        for d in r {
            let arch = d.arch.as_deref().unwrap_or(native);
            let (request, at) = match asked.get(n) {
                Some((t, at)) => (t.clone(), at.as_deref()),
                None => (d.to_string(), None),
            };
            if provider.known(&qualified(&d.name, arch, native)).is_none() {
                let names = names.get_or_insert_with(|| {
                    let mut names: std::collections::BTreeSet<String> = packages
                        .iter()
                        .filter(|p| effective_arch(p, native) == arch)
                        .map(|p| p.name.clone())
                        .collect();
                    names.extend(more_names(arch));
                    names
                });
                let close = suggest::close_names(&d.name, names.iter().map(String::as_str));
                out.push(Missing::name(&request, close).at(at));
                continue;
            }
            let Some((Relation::Eq, want)) = &d.constraint else {
                continue;
            };
            let mut have: Vec<&Version> = packages
                .iter()
                .filter(|p| p.name == d.name && effective_arch(p, native) == arch)
                .map(|p| &p.version)
                .collect();
            // A virtual package (only provided): the solver explains it.
            if have.is_empty() || have.contains(&want) {
                continue;
            }
            have.sort_by(|a, b| b.cmp(a));
            have.dedup();
            let versions = have.iter().map(|v| v.to_string()).collect();
            out.push(Missing::version(&request, &d.name, versions).at(at));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::repo::test_package as pkg;

    fn req(name: &str, arch: Option<&str>) -> Vec<Dep> {
        vec![Dep {
            name: name.into(),
            arch: arch.map(String::from),
            constraint: None,
        }]
    }

    fn names(u: &[Package], picked: &[usize]) -> Vec<String> {
        picked
            .iter()
            .map(|&i| format!("{}:{}={}", u[i].name, u[i].arch, u[i].version))
            .collect()
    }

    #[test]
    fn plain_dependency_stays_at_its_architecture_or_crosses_to_foreign() {
        let u = vec![
            pkg("app", "1", "i386", "no", "libx, tool, data"),
            pkg("libx", "1", "amd64", "same", ""),
            pkg("libx", "1", "i386", "same", ""),
            pkg("tool", "1", "amd64", "foreign", ""),
            pkg("data", "1", "all", "foreign", ""),
        ];
        let got = solve(&u, "amd64", &[req("app", Some("i386"))]).unwrap();
        assert_eq!(
            names(&u, &got),
            ["app:i386=1", "data:all=1", "libx:i386=1", "tool:amd64=1"]
        );
    }

    #[test]
    fn any_qualifier_accepts_multi_arch_allowed() {
        let u = vec![
            pkg("app", "1", "i386", "no", "python3:any"),
            pkg("python3", "3.11", "amd64", "allowed", ""),
        ];
        let got = solve(&u, "amd64", &[req("app", Some("i386"))]).unwrap();
        assert_eq!(names(&u, &got), ["app:i386=1", "python3:amd64=3.11"]);
        // Without `:any`, `allowed` does not cross architectures.
        let u2 = vec![
            pkg("app", "1", "i386", "no", "python3"),
            pkg("python3", "3.11", "amd64", "allowed", ""),
        ];
        assert!(solve(&u2, "amd64", &[req("app", Some("i386"))]).is_err());
    }

    #[test]
    fn same_packages_share_a_version_and_others_one_architecture() {
        let u = vec![
            pkg("libx", "1", "amd64", "same", ""),
            pkg("libx", "2", "amd64", "same", ""),
            pkg("libx", "1", "i386", "same", ""),
            pkg("tool", "1", "amd64", "no", ""),
            pkg("tool", "1", "i386", "no", ""),
        ];
        // libx:i386 exists only at 1, so the native one follows.
        let got = solve(&u, "amd64", &[req("libx", None), req("libx", Some("i386"))]).unwrap();
        assert_eq!(names(&u, &got), ["libx:amd64=1", "libx:i386=1"]);
        // A package that is not Multi-Arch: same is installed at one architecture.
        let err = solve(&u, "amd64", &[req("tool", None), req("tool", Some("i386"))]).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<AptError>(),
                Some(AptError::Unsatisfiable { explanation }) if explanation.contains("tool")
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("apt: the requested packages cannot be installed together:\n"));
    }

    #[test]
    fn unknown_packages_are_named_with_their_architecture() {
        let u = vec![pkg("hello", "1", "amd64", "no", "")];
        let err = solve(&u, "amd64", &[req("nope", None)]).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<AptError>(),
                Some(AptError::UnknownPackages { missing }) if missing.len() == 1 && missing[0].request == "nope"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "apt: 1 requested package not found in the configured repositories:\n  - `nope`: no such package"
        );
        let err = solve(&u, "amd64", &[req("hello", Some("i386"))]).unwrap_err();
        assert!(
            err.to_string().ends_with("- `hello:i386`: no such package"),
            "{err}"
        );
    }

    #[test]
    fn every_unknown_name_and_version_is_named_with_what_exists() {
        let u = vec![
            pkg("build-essential", "12.9", "amd64", "no", ""),
            pkg("python3", "3.11.2-1", "amd64", "no", ""),
            pkg("python3", "3.11.2-1+b1", "amd64", "no", ""),
            pkg("curl", "7.88", "amd64", "no", ""),
        ];
        let mut want = req("python3", None);
        want[0].constraint = Some((Relation::Eq, Version::parse("1.0").unwrap()));
        let requests = [
            req("build-esential", None),
            req("crul", None),
            want,
            req("curl", None),
        ];
        let asked = [
            ("build-esential".to_string(), None),
            ("crul".to_string(), Some("apt.txt:2".to_string())),
            ("python3=1.0".to_string(), None),
        ];
        let err = solve_asked(&u, "amd64", &requests, &asked, &|_| Vec::new()).unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        assert_eq!(
            err.to_string(),
            "apt: 3 requested packages not found in the configured repositories:\n  \
             - `build-esential`: no such package; did you mean `build-essential`?\n  \
             - `crul` (apt.txt:2): no such package; did you mean `curl`?\n  \
             - `python3=1.0`: no such version; python3 has 3.11.2-1+b1, 3.11.2-1"
        );
    }
}
