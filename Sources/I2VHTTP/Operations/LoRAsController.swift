import Hummingbird
import I2VCore

/// `GET /loras` and `GET /v1/loras`: the LoRA catalog, for a client choosing what to put in `loras`. Both
/// behind the API key, as the submits that use them are.
package struct LoRAsController: Sendable {
    package let catalog: any LoRACatalog
    /// Whether a submit's `loras` may give a `url` (`I2V_LORA_URLS`), said beside the list so a client (the
    /// playground) offers a URL only where the server takes one.
    package let acceptsURLs: Bool

    package init(catalog: any LoRACatalog, acceptsURLs: Bool = false) {
        self.catalog = catalog
        self.acceptsURLs = acceptsURLs
    }

    package func addRoutes(native: RouterGroup<AppRequestContext>, openAI: RouterGroup<AppRequestContext>) {
        native.get("loras", use: list)
        openAI.get("loras", use: openAIList)
    }

    @Sendable package func list(request: Request, context: AppRequestContext) async throws -> Response {
        JSONBody.response(status: .ok, value: LoRAs(loras: await catalog.entries().map { LoRABody($0, openAI: false) }, urls: acceptsURLs))
    }

    @Sendable package func openAIList(request: Request, context: AppRequestContext) async throws -> Response {
        JSONBody.response(status: .ok, value: LoRAList(data: await catalog.entries().map { LoRABody($0, openAI: true) }, urls: acceptsURLs))
    }

    /// One LoRA of the catalog. On `/v1` it carries OpenAI's `id` and `object` beside the same fields.
    package struct LoRABody: Encodable {
        package var id: String?
        package var object: String?
        package var name: String
        /// The models of the table its shapes fit (by the transformer width its layers read and write).
        package var models: [String]
        package var rank: Int
        package var sizeBytes: Int
        package var sha256: String

        package enum CodingKeys: String, CodingKey {
            case id, object, name, models, rank
            case sizeBytes = "size_bytes"
            case sha256
        }

        package init(_ entry: LoRAEntry, openAI: Bool) {
            id = openAI ? entry.name : nil
            object = openAI ? "lora" : nil
            name = entry.name
            models = entry.models
            rank = entry.rank
            sizeBytes = entry.sizeBytes
            sha256 = entry.sha256
        }
    }

    package struct LoRAs: Encodable {
        package var loras: [LoRABody]
        package var urls: Bool
    }

    package struct LoRAList: Encodable {
        package var object = "list"
        package var data: [LoRABody]
        package var urls: Bool
    }
}
