import Configuration
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import ImageIntake
import Logging
import NIOCore
import Testing

@testable import I2VApp
@testable import I2VCore
@testable import I2VGPUNode
@testable import I2VHTTP
@testable import I2VStorePostgres
@testable import I2VStoreSQLite
@testable import I2VWebhooks

@Suite struct AuthTests {
    @Test func missingMalformedAndUnknownKeysAre401WithChallenge() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await app.test(.router) { client in
            for path in ["/video/submit", "/video/status", "/video/cancel"] {
                for header: String? in [nil, "Bearer", "Basic \(TestKeys.alice)", "Bearer wrong-key", "Bearer \(TestKeys.alice)x"] {
                    var headers: HTTPFields = [.contentType: "application/json"]
                    if let header { headers[.authorization] = header }
                    let response = try await client.execute(uri: path, method: .post, headers: headers, body: ByteBuffer(string: "{}"))
                    #expect(response.status == .unauthorized, "\(path) with \(header ?? "no header")")
                    #expect(response.headers[.wwwAuthenticate] == "Bearer")
                    let detail = try response.jsonObject()["detail"] as? [String: Any]
                    #expect(detail?["status"] as? String == "Failed")
                    #expect((detail?["reason"] as? String)?.isEmpty == false)
                }
            }
        }
    }

    @Test func anotherKeysTaskIsNotFound() async throws {
        let directory = try TemporaryDirectory()
        let app = try await makeTestApp(dataDir: directory.url, worker: FakeWorker(ready: false))
        try await withImageServer { base in
            try await app.test(.router) { client in
                let id = try await client.submit(imageURL: "\(base)/image.png", key: TestKeys.alice)
                let peek = try await client.post("/video/status", key: TestKeys.bob, json: #"{"requestId":"\#(id)"}"#)
                #expect(peek.status == .notFound)
                let cancel = try await client.post("/video/cancel", key: TestKeys.bob, json: #"{"requestId":"\#(id)"}"#)
                #expect(cancel.status == .notFound)
                // The owner still sees it queued: bob's cancel changed nothing.
                #expect(try await client.status(id, key: TestKeys.alice)["status"] as? String == "InQueue")
            }
        }
    }

    @Test func generatedKeyIsPrintedOnceAndOnlyItsHashIsStored() throws {
        let directory = try TemporaryDirectory()
        let keyring = try APIKeyring.load(configured: [], dataDirectory: directory.url, logger: .init(label: "test"))
        let stored = try String(contentsOf: directory.url.appending(path: "api-key.sha256"), encoding: .utf8)
        #expect(stored.trimmingCharacters(in: .whitespacesAndNewlines).count == 64)
        // The same data dir on the next start accepts the same hashes, and nothing else.
        let again = try APIKeyring.load(configured: [], dataDirectory: directory.url, logger: .init(label: "test"))
        #expect(again.authenticate("not-the-key") == nil)
        #expect(keyring.authenticate("not-the-key") == nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: directory.url.appending(path: "api-key.sha256").path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test func aStoredHashAcceptsItsKeyOnTheNextStart() throws {
        let directory = try TemporaryDirectory()
        // The hash file as a first start writes it: lowercase hex of the key's SHA-256, one per line.
        let expected = try #require(APIKeyring(keys: ["known-key"]).authenticate("known-key"))
        try Data((expected + "\n").utf8).write(to: directory.url.appending(path: "api-key.sha256"))
        let keyring = try APIKeyring.load(configured: [], dataDirectory: directory.url, logger: .init(label: "test"))
        #expect(keyring.authenticate("known-key") == expected)
        #expect(keyring.authenticate("other-key") == nil)
        #expect(expected.count == 64 && expected == expected.lowercased())
    }

    @Test func configuredKeysAreAcceptedByHash() {
        let keyring = APIKeyring(keys: ["one", "two"])
        #expect(keyring.authenticate("one") != nil)
        #expect(keyring.authenticate("two") != nil)
        #expect(keyring.authenticate("one") != keyring.authenticate("two"))
        #expect(keyring.authenticate("three") == nil)
        #expect(keyring.authenticate("") == nil)
    }
}
