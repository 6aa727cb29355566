//! The stage DAG: edges from each input reference to its stage, topological order, and cycles named.

use petgraph::graph::{DiGraph, NodeIndex};

use crate::study::{InputSource, Study, StudyError};

/// The stage graph of a study, by stage index.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Per stage: the stages it reads from (sorted, unique).
    pub upstream: Vec<Vec<usize>>,
    /// Per stage: the stages that read from it (sorted, unique).
    pub downstream: Vec<Vec<usize>>,
    /// All stages, upstream before downstream; ties in file order.
    pub order: Vec<usize>,
}

/// Builds the DAG; a cycle is an error that names every stage on it, in order.
pub fn build(study: &Study) -> Result<Dag, StudyError> {
    let index: std::collections::HashMap<&str, usize> =
        study.stages.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let n = study.stages.len();
    let mut upstream = vec![Vec::new(); n];
    let mut downstream = vec![Vec::new(); n];
    let mut graph = DiGraph::<usize, ()>::with_capacity(n, n);
    let nodes: Vec<NodeIndex> = (0..n).map(|i| graph.add_node(i)).collect();
    for (i, stage) in study.stages.iter().enumerate() {
        for input in stage.inputs.values() {
            if let InputSource::Stage { stage: up, .. } = &input.source {
                let j = index[up.as_str()];
                upstream[i].push(j);
                downstream[j].push(i);
                graph.update_edge(nodes[j], nodes[i], ());
            }
        }
    }
    for list in upstream.iter_mut().chain(downstream.iter_mut()) {
        list.sort_unstable();
        list.dedup();
    }
    // Kahn's algorithm with a min-heap keeps file order among independent stages, so output is deterministic.
    let mut indegree: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(std::cmp::Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &downstream[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push(std::cmp::Reverse(d));
            }
        }
    }
    if order.len() < n {
        return Err(cycle_error(study, &graph, &upstream));
    }
    Ok(Dag { upstream, downstream, order })
}

fn cycle_error(study: &Study, graph: &DiGraph<usize, ()>, upstream: &[Vec<usize>]) -> StudyError {
    let scc = petgraph::algo::tarjan_scc(graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .min_by_key(|c| c.iter().map(|n| graph[*n]).min())
        .expect("an incomplete topological order implies a cycle");
    let members: std::collections::HashSet<usize> = scc.iter().map(|n| graph[*n]).collect();
    // Walk upstream edges inside the component from its first stage until a stage repeats.
    let start = *members.iter().min().expect("non-empty");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = *upstream[cur].iter().find(|u| members.contains(u)).expect("every member has an upstream member");
        if let Some(pos) = path.iter().position(|&p| p == next) {
            path.drain(..pos);
            break;
        }
        path.push(next);
        cur = next;
    }
    // `path` follows "reads from"; print it in the direction data flows, starting at the first stage in file order.
    path.reverse();
    let first_pos = path.iter().enumerate().min_by_key(|(_, i)| **i).map(|(p, _)| p).unwrap_or(0);
    path.rotate_left(first_pos);
    let names: Vec<&str> = path.iter().map(|&i| study.stages[i].id.as_str()).collect();
    let shown = format!("{} → {}", names.join(" → "), names[0]);
    let first = &study.stages[path[0]];
    let input_span = |reader: usize, from: usize| {
        study.stages[reader]
            .inputs
            .values()
            .find(|inp| matches!(&inp.source, InputSource::Stage { stage, .. } if *stage == study.stages[from].id))
            .map(|inp| inp.span.clone())
            .unwrap_or(study.stages[reader].origin.id.clone())
    };
    let mut err = StudyError::at(
        &study.source,
        input_span(path[1 % path.len()], path[0]),
        format!("the stages form a cycle: {shown}"),
        format!("`{}` reads from `{}`", study.stages[path[1 % path.len()]].id, first.id),
    )
    .with_help("a stage cannot depend, directly or through others, on its own outputs");
    for w in 1..path.len() {
        let (from, reader) = (path[w], path[(w + 1) % path.len()]);
        err = err.with_related(
            input_span(reader, from),
            format!("`{}` reads from `{}`", study.stages[reader].id, study.stages[from].id),
        );
    }
    err
}
