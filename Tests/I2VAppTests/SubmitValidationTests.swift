import Configuration
import Foundation
import Hummingbird
import HummingbirdTesting
import ImageIntake
import Logging
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

/// Every rule of the submit field table on both sides of its bound, through the real router.
@Suite struct SubmitValidationTests {
    /// A body that is valid except for what a case overrides.
    static func body(_ overrides: [String: String], imageURL: String) -> String {
        var fields: [String: String] = [
            "image_url": "\"\(imageURL)\"",
            "prompt": "\"A dancing cat in the style of Van Gogh\"",
            "num_frames": "24",
            "infer_steps": "20",
        ]
        for (key, value) in overrides { fields[key] = value }
        return "{" + fields.filter { $0.value != "<absent>" }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var field: String
        var value: String
        /// nil = accepted (202); otherwise the expected 422 `type`.
        var rejectedAs: String?
        var testDescription: String { "\(field)=\(value) → \(rejectedAs ?? "202")" }
    }

    static let cases: [Case] = [
        Case(field: "prompt", value: "\"0123456789\"", rejectedAs: nil),
        Case(field: "prompt", value: "\"012345678\"", rejectedAs: "string_too_short"),
        Case(field: "prompt", value: "\"一只猫在梵高风格里跳舞\"", rejectedAs: nil),
        Case(field: "prompt", value: "\"一只猫在梵高风格里跳\"", rejectedAs: nil),
        Case(field: "prompt", value: "\"一只猫在梵高风格里\"", rejectedAs: "string_too_short"),
        Case(field: "prompt", value: "\"\(String(repeating: "a", count: 500))\"", rejectedAs: nil),
        Case(field: "prompt", value: "\"\(String(repeating: "a", count: 501))\"", rejectedAs: "string_too_long"),
        Case(field: "prompt", value: "\"\(String(repeating: "猫", count: 500))\"", rejectedAs: nil),
        Case(field: "prompt", value: "<absent>", rejectedAs: "missing"),
        Case(field: "prompt", value: "null", rejectedAs: "string_type"),
        Case(field: "prompt", value: "12345678901", rejectedAs: "string_type"),
        Case(field: "image_url", value: "<absent>", rejectedAs: "missing"),
        Case(field: "image_url", value: "\"ftp://example.com/a.png\"", rejectedAs: "url_scheme"),
        Case(field: "image_url", value: "\"file:///etc/passwd\"", rejectedAs: "url_scheme"),
        Case(field: "image_url", value: "\"not a url\"", rejectedAs: "url_parsing"),
        Case(field: "image_url", value: "\"/relative/path.png\"", rejectedAs: "url_parsing"),
        Case(field: "image_url", value: "42", rejectedAs: "string_type"),
        Case(field: "num_frames", value: "24", rejectedAs: nil),
        Case(field: "num_frames", value: "23", rejectedAs: "greater_than_equal"),
        Case(field: "num_frames", value: "120", rejectedAs: nil),
        Case(field: "num_frames", value: "121", rejectedAs: "less_than_equal"),
        Case(field: "num_frames", value: "50.5", rejectedAs: "int_from_float"),
        Case(field: "num_frames", value: "\"50\"", rejectedAs: "int_type"),
        Case(field: "num_frames", value: "true", rejectedAs: "int_type"),
        Case(field: "num_frames", value: "null", rejectedAs: "int_type"),
        Case(field: "num_frames", value: "48.0", rejectedAs: nil),
        Case(field: "infer_steps", value: "20", rejectedAs: nil),
        Case(field: "infer_steps", value: "19", rejectedAs: "greater_than_equal"),
        Case(field: "infer_steps", value: "100", rejectedAs: nil),
        Case(field: "infer_steps", value: "101", rejectedAs: "less_than_equal"),
        Case(field: "guidance_scale", value: "1.0", rejectedAs: nil),
        Case(field: "guidance_scale", value: "0.99", rejectedAs: "greater_than_equal"),
        Case(field: "guidance_scale", value: "20", rejectedAs: nil),
        Case(field: "guidance_scale", value: "20.01", rejectedAs: "less_than_equal"),
        Case(field: "guidance_scale", value: "\"3\"", rejectedAs: "float_type"),
        Case(field: "seed", value: "0", rejectedAs: nil),
        Case(field: "seed", value: "-1", rejectedAs: "greater_than_equal"),
        Case(field: "seed", value: "2147483647", rejectedAs: nil),
        Case(field: "seed", value: "2147483648", rejectedAs: "less_than_equal"),
        Case(field: "seed", value: "null", rejectedAs: nil),
        Case(field: "image_size", value: "\"auto\"", rejectedAs: nil),
        Case(field: "image_size", value: "\"480x832\"", rejectedAs: nil),
        Case(field: "image_size", value: "\"832x480\"", rejectedAs: nil),
        Case(field: "image_size", value: "\"640x640\"", rejectedAs: "literal_error"),
        Case(field: "image_size", value: "\"AUTO \"", rejectedAs: "literal_error"),
        Case(field: "model", value: "\"test-model\"", rejectedAs: nil),
        Case(field: "model", value: "\"TEST-MODEL\"", rejectedAs: nil),
        Case(field: "model", value: "\"Wan2.1-I2V-14B-720P\"", rejectedAs: "enum"),
        Case(field: "negative_prompt", value: "\"\"", rejectedAs: nil),
        Case(field: "negative_prompt", value: "\"\(String(repeating: "b", count: 500))\"", rejectedAs: nil),
        Case(field: "negative_prompt", value: "\"\(String(repeating: "b", count: 501))\"", rejectedAs: "string_too_long"),
        Case(field: "unknown_field", value: "{\"nested\":[1,2]}", rejectedAs: nil),
        // Valid JSON numbers beyond what a double or an Int holds are answered for their field.
        Case(field: "num_frames", value: "1e400", rejectedAs: "finite_number"),
        Case(field: "num_frames", value: "-1e400", rejectedAs: "finite_number"),
        Case(field: "num_frames", value: "123456789012345678901234567890", rejectedAs: "less_than_equal"),
        Case(field: "num_frames", value: "-123456789012345678901234567890", rejectedAs: "greater_than_equal"),
        Case(field: "num_frames", value: "1e30", rejectedAs: "less_than_equal"),
        Case(field: "infer_steps", value: "1e400", rejectedAs: "finite_number"),
        Case(field: "infer_steps", value: "99999999999999999999", rejectedAs: "less_than_equal"),
        Case(field: "guidance_scale", value: "1e400", rejectedAs: "less_than_equal"),
        Case(field: "guidance_scale", value: "-1e400", rejectedAs: "greater_than_equal"),
        Case(field: "guidance_scale", value: "123456789012345678901234567890", rejectedAs: "less_than_equal"),
        Case(field: "seed", value: "1e400", rejectedAs: "finite_number"),
        Case(field: "seed", value: "-1e400", rejectedAs: "finite_number"),
        Case(field: "seed", value: "99999999999999999999", rejectedAs: "less_than_equal"),
        Case(field: "prompt", value: "1e400", rejectedAs: "string_type"),
    ]

    @Test(arguments: cases)
    func fieldRule(_ rule: Case) async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let response = try await client.post("/video/submit", json: Self.body([rule.field: rule.value], imageURL: "\(base)/image.png"))
                if let type = rule.rejectedAs {
                    #expect(response.status == .unprocessableContent)
                    let issue = try #require(response.validationIssues.first)
                    #expect(issue["type"] as? String == type)
                    #expect(issue["loc"] as? [String] == ["body", rule.field])
                    #expect((issue["msg"] as? String)?.isEmpty == false)
                } else {
                    #expect(response.status == .accepted, "\(String(buffer: response.body))")
                    let id = try response.jsonObject()["requestId"] as? String
                    #expect(id.map { RandomIdentifier.isHex128($0) } == true)
                }
            }
        }
    }

    @Test func malformedAndNonObjectBodies() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.router) { client in
            for body in ["{not json", "", "[1,2,3]", "\"a string\"", "null", "42"] {
                let response = try await client.post("/video/submit", json: body)
                #expect(response.status == .unprocessableContent, "body \(body)")
                let issue = try #require(response.validationIssues.first)
                #expect((issue["loc"] as? [String])?.first == "body")
            }
            // Several problems are all reported at once, each naming its field.
            let response = try await client.post("/video/submit", json: #"{"prompt":"short","num_frames":500}"#)
            let fields = Set(response.validationIssues.compactMap { ($0["loc"] as? [String])?.last })
            #expect(fields == ["image_url", "prompt", "num_frames"])
        }
    }

    @Test func bodyOverTheCapIs413() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false), ["i2v.maxBodyBytes": 2048])
        try await app.test(.router) { client in
            let big = #"{"prompt":"\#(String(repeating: "x", count: 4096))"}"#
            let response = try await client.post("/video/submit", json: big)
            #expect(response.status == .contentTooLarge)
            #expect(response.failureReason?.contains("2048") == true)
        }
    }

    @Test func requestIdMustBe32Characters() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.router) { client in
            for path in ["/video/status", "/video/cancel"] {
                for (body, type) in [
                    (#"{"requestId":"abc"}"#, "string_too_short"),
                    (#"{"requestId":"\#(String(repeating: "a", count: 33))"}"#, "string_too_long"),
                    (#"{"requestId":12}"#, "string_type"),
                    (#"{"requestId":1e400}"#, "string_type"),
                    (#"{}"#, "missing"),
                ] {
                    let response = try await client.post(path, json: body)
                    #expect(response.status == .unprocessableContent)
                    #expect(response.validationIssues.first?["type"] as? String == type)
                    #expect(response.validationIssues.first?["loc"] as? [String] == ["body", "requestId"])
                }
                let unknown = try await client.post(path, json: #"{"requestId":"\#(String(repeating: "0", count: 32))"}"#)
                #expect(unknown.status == .notFound)
                #expect(unknown.failureReason?.contains("not found") == true)
            }
        }
    }
}
