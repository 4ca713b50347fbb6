import Foundation
import Yams

/// The service's contract, `openapi.yaml`, which the server serves as `/openapi.json`.
public enum OpenAPIDocument {
    public static func yaml() throws -> String {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml") else {
            throw CocoaError(.fileNoSuchFile)
        }
        return try String(contentsOf: url, encoding: .utf8)
    }

    /// The document as JSON bytes, keys sorted so the output is stable.
    public static func json() throws -> [UInt8] {
        let object = try Yams.load(yaml: yaml()) ?? [:]
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
    }

    /// Every documented path template (e.g. `/videos/{file}`) with its HTTP methods, upper case.
    public static func operations() throws -> [String: [String]] {
        let methods: Set<String> = ["get", "head", "post", "put", "patch", "delete", "options", "trace"]
        let paths = (try object()["paths"] as? [String: [String: Any]]) ?? [:]
        return paths.mapValues { item in item.keys.filter(methods.contains).map { $0.uppercased() }.sorted() }
    }

    /// The document as a dictionary, for tests that compare it with the routes.
    public static func object() throws -> [String: Any] {
        (try Yams.load(yaml: yaml()) as? [String: Any]) ?? [:]
    }
}
