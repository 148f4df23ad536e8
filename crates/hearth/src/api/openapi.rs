//! `GET /openapi.json`: the API described as OpenAPI 3.1, written by hand next to the routes
//! (a test checks that the document and the router list the same routes).

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route the router serves (server.rs), as (path, method).
    const ROUTES: &[(&str, &str)] = &[
        ("/v1/tasks", "get"),
        ("/v1/tasks", "post"),
        ("/v1/tasks/{id}", "get"),
        ("/v1/tasks/{id}/events", "get"),
        ("/v1/tasks/{id}/cancel", "post"),
        ("/v1/sandboxes", "get"),
        ("/v1/sandboxes", "post"),
        ("/v1/sandboxes/{id}", "get"),
        ("/v1/sandboxes/{id}", "delete"),
        ("/v1/sandboxes/{id}/exec", "post"),
        ("/v1/sandboxes/{id}/files", "get"),
        ("/v1/sandboxes/{id}/files", "put"),
        ("/openapi.json", "get"),
    ];

    #[test]
    fn the_document_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.insert((path.clone(), method.clone()));
                }
            }
        }
        let routes: BTreeSet<_> = ROUTES
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .collect();
        assert_eq!(documented, routes);
        // Every reference resolves.
        let text = super::DOCUMENT;
        for piece in text.split("\"$ref\": \"#/").skip(1) {
            let pointer = format!("/{}", &piece[..piece.find('"').unwrap()]);
            assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
        }
    }
}
