//! The services the embeddings pipeline talks to, on their own: the
//! OpenAI-compatible embeddings server (samples/embeddings/server.py, a real
//! wordllama model) and a real Chroma. The handler's tests (embeddings.rs)
//! lean on both behaving as these tests pin down: both URL shapes, the key,
//! the failure switches and the call log, ranking by meaning, and Chroma's
//! REST v2 upsert/query/delete by stable ids.

use std::process::Command;

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};

use crate::support::{EMBEDDINGS_KEY, EmbeddingsServer, chroma, embeddings_server, repo};

const AZURE_PATH: &str = "/openai/deployments/embed/embeddings?api-version=2024-02-01";

fn openai(server: &EmbeddingsServer, input: Value) -> Response {
    Client::new()
        .post(format!("{}/v1/embeddings", server.url()))
        .bearer_auth(EMBEDDINGS_KEY)
        .json(&json!({ "input": input, "model": "wordllama-l2-supercat-256" }))
        .send()
        .unwrap()
}

/// The vectors of a 200 answer, in input order (checked by `index`).
fn vectors(response: Response) -> Vec<Vec<f32>> {
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    assert_eq!(answer["object"], "list");
    let data = answer["data"].as_array().unwrap();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i, "answers come back in input order");
        assert_eq!(item["object"], "embedding");
    }
    data.iter().map(|item| serde_json::from_value(item["embedding"].clone()).unwrap()).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn both_url_shapes_embed_with_the_same_model_into_256_unit_dimensions() {
    let server = embeddings_server();
    let texts = json!([
        "Event Grid retries each failed delivery with an exponential backoff, for up to 24 hours.",
        "Bread needs flour."
    ]);
    let response = openai(&server, texts.clone());
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    assert_eq!(answer["model"], "wordllama-l2-supercat-256");
    let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(answer["usage"]["total_tokens"], tokens);
    let alone = |text: &str| -> u64 {
        let answer: Value = openai(&server, json!(text)).json().unwrap();
        answer["usage"]["prompt_tokens"].as_u64().unwrap()
    };
    let (first, second) = (
        alone("Event Grid retries each failed delivery with an exponential backoff, for up to 24 hours."),
        alone("Bread needs flour."),
    );
    assert!(first > second && second > 0, "{first} {second}");
    assert_eq!(tokens, first + second, "usage counts each text's tokens, not the padding of a batch");

    let azure = Client::new()
        .post(format!("{}{AZURE_PATH}", server.url()))
        .header("api-key", EMBEDDINGS_KEY)
        .json(&json!({ "input": texts }))
        .send()
        .unwrap();
    let from_azure = vectors(azure);
    let from_openai = vectors(openai(
        &server,
        json!([
            "Event Grid retries each failed delivery with an exponential backoff, for up to 24 hours.",
            "Bread needs flour."
        ]),
    ));
    assert_eq!(from_azure.len(), 2);
    for vector in &from_azure {
        assert_eq!(vector.len(), 256);
        let length = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((length - 1.0).abs() < 1e-4, "unit length like OpenAI's vectors: {length}");
    }
    assert_eq!(from_azure, from_openai, "one model behind both URL shapes");
    assert_ne!(from_azure[0], from_azure[1]);

    let single = vectors(openai(
        &server,
        json!("Event Grid retries each failed delivery with an exponential backoff, for up to 24 hours."),
    ));
    assert_eq!(single, from_openai[..1], "a lone string is one input");
}

#[test]
fn it_ranks_a_question_closer_to_the_sentence_that_answers_it() {
    let server = embeddings_server();
    let v = vectors(openai(
        &server,
        json!([
            "How does Event Grid deliver events?",
            "Event Grid pushes each event to the subscriber's webhook endpoint and retries failed deliveries.",
            "Knead the dough for ten minutes and let it rise somewhere warm."
        ]),
    ));
    let (related, unrelated) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(related > unrelated + 0.2, "Event Grid {related} vs bread {unrelated}");

    // The server's own self-check (the model, then both URL shapes over a socket).
    let python = repo("target/ai-venv/bin/python");
    let output = Command::new(python).arg(repo("samples/embeddings/server.py")).arg("--self-test").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "server.py --self-test failed:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("closer to Event Grid") && stdout.ends_with("self-test passed\n"), "{stdout}");
}

#[test]
fn the_key_is_checked_in_the_header_each_url_shape_uses() {
    let server = embeddings_server();
    let client = Client::new();
    let body = json!({ "input": "hello" });
    let v1 = format!("{}/v1/embeddings", server.url());
    let azure = format!("{}{AZURE_PATH}", server.url());
    let refused = [
        client.post(&v1).json(&body).send().unwrap(),
        client.post(&v1).bearer_auth("wrong").json(&body).send().unwrap(),
        client.post(&v1).header("api-key", EMBEDDINGS_KEY).json(&body).send().unwrap(),
        client.post(&azure).json(&body).send().unwrap(),
        client.post(&azure).bearer_auth(EMBEDDINGS_KEY).json(&body).send().unwrap(),
    ];
    for response in refused {
        assert_eq!(response.status(), 401);
        let error: Value = response.json().unwrap();
        assert_eq!(error["error"]["code"], "invalid_api_key");
    }
    assert_eq!(client.post(&azure).header("api-key", EMBEDDINGS_KEY).json(&body).send().unwrap().status(), 200);
    let statuses: Vec<u16> = server.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 200], "every call is in the log, refused ones too");

    let no_version = client.post(format!("{}/openai/deployments/embed/embeddings", server.url()));
    assert_eq!(no_version.header("api-key", EMBEDDINGS_KEY).json(&body).send().unwrap().status(), 400);
    assert_eq!(openai(&server, json!([])).status(), 400, "no input is a client error, not an empty answer");
}

#[test]
fn the_503_switch_fails_exactly_the_next_calls_then_the_server_answers_again() {
    let server = embeddings_server();
    server.fail(503, 2, None);
    let statuses: Vec<u16> = (0..3).map(|_| openai(&server, json!(["a", "b", "c"])).status().as_u16()).collect();
    assert_eq!(statuses, [503, 503, 200]);

    let calls = server.calls();
    assert_eq!(calls.iter().map(|c| (c.status, c.inputs)).collect::<Vec<_>>(), [(503, 3), (503, 3), (200, 3)]);
    assert!(calls.windows(2).all(|w| w[0].time <= w[1].time), "in order: {calls:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - calls[0].time).abs() < 60.0, "times are unix seconds: {}", calls[0].time);

    server.reset();
    assert!(server.calls().is_empty());
}

#[test]
fn the_429_switch_answers_with_retry_after_and_reset_disarms_it() {
    let server = embeddings_server();
    server.fail(429, 1, Some(2));
    let limited = openai(&server, json!("a"));
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "2");
    assert_eq!(openai(&server, json!("a")).status(), 200, "count 1: only one call is refused");

    server.fail(429, 5, Some(7));
    server.reset();
    let after_reset = openai(&server, json!("a"));
    assert_eq!(after_reset.status(), 200);
    assert!(after_reset.headers().get("retry-after").is_none());
    assert_eq!(server.calls().len(), 1);
}

#[test]
fn chroma_stores_vectors_by_stable_id_and_finds_the_nearest_over_rest_v2() {
    let chroma = chroma();
    let server = embeddings_server();
    let client = Client::new();
    let collections = format!("{}/api/v2/tenants/default_tenant/databases/default_database/collections", chroma.url());
    let created: Value = client
        .post(&collections)
        .json(&json!({"name": "documents", "get_or_create": true, "metadata": {"hnsw:space": "cosine"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let collection = format!("{collections}/{}", created["id"].as_str().unwrap());
    let call = |verb: &str, body: Value| -> Value {
        let response = client.post(format!("{collection}/{verb}")).json(&body).send().unwrap();
        assert!(response.status().is_success(), "{verb}: {} {}", response.status(), response.text().unwrap());
        response.json().unwrap()
    };

    let documents = [
        "Event Grid delivers each event to the subscriber's endpoint over HTTPS and retries on failure.",
        "Events that cannot be delivered are dead-lettered to a storage container.",
        "Sourdough bread needs a ripe starter, flour, water and salt.",
    ];
    let ids = ["https://a/docs/grid.md#0", "https://a/docs/grid.md#1", "https://a/docs/bread.md#0"];
    let embeddings = vectors(openai(&server, json!(documents)));
    let metadatas: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| json!({"blob_url": id.split('#').next().unwrap(), "chunk_index": i}))
        .collect();
    let upsert = json!({"ids": ids, "embeddings": embeddings, "documents": documents, "metadatas": metadatas});
    call("upsert", upsert.clone());
    call("upsert", upsert);
    let count: u64 = client.get(format!("{collection}/count")).send().unwrap().json().unwrap();
    assert_eq!(count, 3, "upserting the same ids again replaces, never duplicates");

    let question = vectors(openai(&server, json!("How does Event Grid deliver events?")));
    let hits =
        call("query", json!({"query_embeddings": question, "n_results": 3, "include": ["documents", "distances"]}));
    assert_eq!(hits["ids"][0][0], ids[0], "{hits}");
    assert_eq!(hits["ids"][0][2], ids[2], "bread is furthest: {hits}");
    let distances: Vec<f64> = serde_json::from_value(hits["distances"][0].clone()).unwrap();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]), "{distances:?}");

    let grid = call("get", json!({"where": {"blob_url": "https://a/docs/grid.md"}, "include": ["metadatas"]}));
    assert_eq!(grid["ids"].as_array().unwrap().len(), 2);
    call("delete", json!({"where": {"blob_url": "https://a/docs/grid.md"}}));
    let left = call("get", json!({"include": []}));
    assert_eq!(left["ids"], json!([ids[2]]));
}
