//! An OpenAI-compatible embeddings API (OpenAI's `/v1/embeddings`, Azure
//! OpenAI's `/openai/deployments/D/embeddings`, and what Ollama, vLLM, TEI and
//! `samples/embeddings/server.py` serve): one request per batch of inputs.

use gridfn_sdk::http::Request;

use crate::failure::{Failure, call};
use crate::settings::EmbeddingsApi;

/// One vector per input, in the inputs' order.
pub fn embed(api: &EmbeddingsApi, inputs: &[String]) -> Result<Vec<Vec<f32>>, Failure> {
    let body = serde_json::json!({ "input": inputs, "model": api.model });
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some((name, value)) = &api.auth {
        headers.push((name.to_string(), value.clone()));
    }
    let request = Request { method: "POST".into(), url: api.url.clone(), headers, body: body.to_string().into_bytes() };
    let response = call("the embeddings API", request)?;
    parse(&response.body, inputs.len()).map_err(|problem| {
        Failure::Permanent(format!("the embeddings API at {} answered in an unexpected shape: {problem}", api.url))
    })
}

#[derive(serde::Deserialize)]
struct Answer {
    data: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

/// The vectors of an answer to `expected` inputs, put in input order by
/// their `index` (the API does not promise the order), all of one length.
fn parse(body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if answer.data.len() != expected {
        return Err(format!("{} embeddings for {expected} inputs", answer.data.len()));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for item in answer.data {
        let slot = vectors.get_mut(item.index).ok_or(format!("index {} for {expected} inputs", item.index))?;
        if slot.replace(item.embedding).is_some() {
            return Err(format!("index {} twice", item.index));
        }
    }
    let vectors: Vec<Vec<f32>> = vectors.into_iter().map(|v| v.expect("each index filled once")).collect();
    let dimensions = vectors.first().map_or(0, Vec::len);
    if dimensions == 0 || vectors.iter().any(|v| v.len() != dimensions) {
        return Err("vectors that are empty or of different lengths".into());
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_in_input_order() {
        let body = br#"{"object":"list","model":"m","usage":{"prompt_tokens":2,"total_tokens":2},"data":[
            {"object":"embedding","index":1,"embedding":[0.5,0.25]},
            {"object":"embedding","index":0,"embedding":[1.0,-1.0]}]}"#;
        assert_eq!(parse(body, 2).unwrap(), vec![vec![1.0, -1.0], vec![0.5, 0.25]]);
    }

    #[test]
    fn answers_that_do_not_match_the_inputs_are_refused() {
        let one = br#"{"data":[{"index":0,"embedding":[1.0]}]}"#;
        assert_eq!(parse(one, 2).unwrap_err(), "1 embeddings for 2 inputs");
        let twice = br#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[2.0]}]}"#;
        assert_eq!(parse(twice, 2).unwrap_err(), "index 0 twice");
        let beyond = br#"{"data":[{"index":5,"embedding":[1.0]}]}"#;
        assert_eq!(parse(beyond, 1).unwrap_err(), "index 5 for 1 inputs");
        let ragged = br#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[2.0,3.0]}]}"#;
        assert!(parse(ragged, 2).unwrap_err().contains("different lengths"));
        assert!(parse(b"<html>", 1).is_err());
    }
}
