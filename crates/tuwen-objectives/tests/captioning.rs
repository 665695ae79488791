//! Captioning: next-token targets, and a decoder that learns one caption and regenerates it.

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Tensor, TensorData};
use tuwen_fusion::decoder::DecoderConfig;
use tuwen_objectives::lm::{next_token_targets, seq2seq_loss};
use tuwen_objectives::mlm::IGNORE;
use tuwen_testkit::flex;

#[test]
fn targets_shift_by_one_and_ignore_padding() {
    let ids = [2, 7, 8, 3, 0, 2, 9, 3, 0, 0];
    let att = [1, 1, 1, 1, 0, 1, 1, 1, 0, 0];
    let (positions, labels) = next_token_targets(&ids, &att, 2);
    assert_eq!(positions, vec![0, 1, 2, 5, 6]);
    assert_eq!(
        labels,
        vec![7, 8, 3, IGNORE, IGNORE, 9, 3, IGNORE, IGNORE, IGNORE]
    );
}

#[test]
fn a_decoder_learns_a_caption_and_greedy_decoding_regenerates_it() {
    let device = flex().autodiff();
    let config = DecoderConfig {
        layers: 1,
        heads: 2,
        intermediate: 32,
        max_positions: 12,
        dropout: 0.0,
        ..DecoderConfig::new(20, 16, 8)
    };
    let mut decoder = config.init(&device);
    let encoder = Tensor::<3>::random([1, 4, 8], burn::tensor::Distribution::Default, &device);
    let caption = vec![1i64, 7, 12, 5, 9, 2]; // bos ... eos
    let attention = vec![1i64; caption.len()];
    let ids = Tensor::from_data(
        TensorData::new(caption.clone(), [1, caption.len()]),
        &device,
    );
    let mut optim = AdamConfig::new().init();
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..80 {
        let logits = decoder.forward(ids.clone(), encoder.clone(), None);
        let (loss, _) = seq2seq_loss(logits, &caption, &attention, Some(0.05));
        last = loss.loss.clone().into_scalar::<f32>();
        first.get_or_insert(last);
        let grads = GradientsParams::from_grads(loss.loss.backward(), &decoder);
        decoder = optim.step(3e-3, decoder, grads);
    }
    assert!(
        last < first.unwrap() * 0.2,
        "loss {} -> {last}",
        first.unwrap()
    );
    let generated = decoder.valid().generate_greedy(encoder.inner(), 1, 2, 10);
    assert_eq!(generated, vec![caption[1..].to_vec()]);
}
