from tests.fakes import webhook_receiver

receiver = webhook_receiver.receiver  # the local receiver fixture
