import ImageIntake
import Logging

extension SubmitTask {
    /// A webhook URL is checked like an image URL before anything is queued (and again before every
    /// delivery: DNS may change), under the same `I2V_ALLOW_PRIVATE_IMAGE_HOSTS` switch.
    package func refuseUnusableWebhook(_ webhook: WebhookSubscription, logger: Logger) async throws(SubmitFailure) {
        let urlGuard = OutboundGuard(allowPrivateHosts: intake.configuration.allowPrivateHosts, subject: "webhook_url")
        do {
            _ = try await urlGuard.check(webhook.url)
        } catch {
            logger.info("webhook URL refused", metadata: ["reason": "\(error.reason)"])
            throw .unusableWebhook(error)
        }
    }
}
